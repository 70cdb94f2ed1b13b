"""Sampled capture of live requests: turning it on and off per model version, and reading what it wrote.

The workers write it (handlers/torchship_capture.py, which documents the record format); this side
writes each version's `settings.json` (the worker reads it again within a second: no restart) and
reads the capture files. The folders: `<capture root>/<model>/<version>/`, the root being the
project's `.torchship/capture` (the servers torchship starts hand it to their workers). Captured
requests are user data: the folders are made 0700, the settings and the redaction key 0600.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchship.handlers import torchship_capture, torchship_drift
from torchship.sdk.errors import BadInput

if TYPE_CHECKING:
    from torchship.ops.desired import Action, DesiredState

__all__ = [
    "CaptureStatus",
    "write_settings",
    "turn_off",
    "status",
    "records",
    "parse_redact",
    "replay_inputs",
    "replay_golden",
    "capture_plan",
    "apply_capture",
]


@dataclass(frozen=True)
class CaptureStatus:
    """One version's capture: its settings and what its folder holds."""

    model: str
    version: str
    sample: float
    redact: dict[str, str]
    files: int
    bytes: int
    max_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Return the status as plain data."""
        return dict(self.__dict__)


def parse_redact(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`FIELD=hash` / `FIELD=drop` options (a bare FIELD hashes) into the settings' `redact`."""
    rules: dict[str, str] = {}
    for item in items:
        field, _, how = item.partition("=")
        how = how or "hash"
        if not field or how not in torchship_capture.REDACTIONS:
            raise BadInput(f"--redact {item!r}: give FIELD=hash or FIELD=drop")
        rules[field] = how
    return rules


def _folder(root: Path, model: str, version: str) -> Path:
    from torchship.archiver.names import check_name_version

    check_name_version(model, version)  # names reach a path: the name rule keeps them one folder each
    return torchship_capture.folder(root, model, version)


def write_settings(
    root: Path,
    model: str,
    version: str,
    *,
    sample: float,
    redact: dict[str, str] | None = None,
    max_bytes: int | None = None,
    file_bytes: int | None = None,
    drift_every_s: float | None = None,
) -> dict[str, Any]:
    """Write a version's capture settings (checked as the worker checks them); return them."""
    settings: dict[str, Any] = {"sample": sample, "redact": dict(redact or {})}
    if max_bytes is not None:
        settings["max_bytes"] = max_bytes
    if file_bytes is not None:
        settings["file_bytes"] = file_bytes
    if drift_every_s is not None:
        settings["drift_every_s"] = drift_every_s
    try:
        checked = torchship_capture.check_settings(settings)
    except ValueError as exc:
        raise BadInput(f"capture of {model} {version}: {exc}") from None
    folder = _folder(root, model, version)
    folder.mkdir(parents=True, exist_ok=True)
    for d in (root, folder.parent, folder):
        os.chmod(d, 0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".settings-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(checked, f)
        os.replace(tmp, folder / torchship_capture.SETTINGS)  # a worker never reads half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return checked


def turn_off(root: Path, model: str, version: str) -> bool:
    """Stop capturing a version (its records stay); False when it was not on."""
    path = _folder(root, model, version) / torchship_capture.SETTINGS
    if not path.is_file():
        return False
    path.unlink()
    return True


def capture_plan(root: Path, desired: DesiredState) -> list[Action]:
    """Return the `capture` actions that bring each listed version's capture to what a desired state says.

    Models without a `capture:` entry are left as they are; each action's params are the settings.
    """
    from torchship.ops.desired import Action

    actions = []
    for model in desired.models.values():
        if model.capture is None:
            continue
        for version in model.versions:
            folder = _folder(root, model.name, version)
            current = _settings(folder) if (folder / torchship_capture.SETTINGS).is_file() else None
            want = model.capture
            if current is None and not want["sample"]:
                continue  # off, and off is wanted
            if current is not None and all(current.get(k) == v for k, v in want.items()):
                continue
            redacted = ", ".join(f"{k} ({v})" for k, v in want["redact"].items())
            detail = f"sample {want['sample']:g}" if want["sample"] else "off"
            actions.append(
                Action("capture", model.name, version, detail + (f", redact {redacted}" if redacted else ""), want)
            )
    return actions


def apply_capture(root: Path, action: Action) -> None:
    """Carry out one `capture` action of `capture_plan`."""
    settings = action.params
    if settings["sample"]:
        write_settings(
            root,
            action.model,
            action.version,
            sample=settings["sample"],
            redact=settings["redact"],
            max_bytes=settings["max_bytes"],
            file_bytes=settings["file_bytes"],
        )
    else:
        turn_off(root, action.model, action.version)


def _settings(folder: Path) -> dict[str, Any]:
    try:
        return torchship_capture.check_settings(json.loads((folder / torchship_capture.SETTINGS).read_text()))
    except (OSError, ValueError):
        return torchship_capture.check_settings({})  # off, with the worker's defaults


def status(root: Path, model: str | None = None) -> list[CaptureStatus]:
    """Every captured (or capturing) version under `root`, or those of one model."""
    out = []
    models = [root / model] if model else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for m in models:
        if not m.is_dir():
            continue
        for v in sorted(p for p in m.iterdir() if p.is_dir()):
            s = _settings(v)
            files = list(v.glob("capture-*.jsonl"))
            out.append(
                CaptureStatus(
                    m.name,
                    v.name,
                    s["sample"],
                    s["redact"],
                    len(files),
                    sum(f.stat().st_size for f in files),
                    s["max_bytes"],
                )
            )
    return out


def records(root: Path, model: str, version: str, *, last: int | None = None) -> list[dict[str, Any]]:
    """A version's captured records in time order (the `last` N when given); a torn line is skipped."""
    return torchship_drift.read_records(_folder(root, model, version), last)


# ---------------------------------------------------------------- replay


def _replayable(value: Any) -> Any:
    """A captured input back into a body the client sends as it was sent; None when it cannot be."""
    if isinstance(value, dict):
        if set(value) == {"base64"}:
            return base64.b64decode(value["base64"])
        if set(value) == {"npy", "data"}:
            import numpy as np

            return np.asarray(value["data"], dtype=np.float32).reshape(value["npy"])
        if "omitted_bytes" in value or "redacted_bytes" in value or "unencodable" in value or set(value) == {"type"}:
            return None
        if any(isinstance(v, str) and v.startswith("hmac:") for v in value.values()):
            return None  # a redacted field: the model would see the hash, not what production sent
    if isinstance(value, list) and any(_replayable(v) is None for v in value if isinstance(v, dict)):
        return None
    if isinstance(value, str) and value.startswith("hmac:"):
        return None  # a binary body redacted to its hash
    return value


def replay_inputs(captured: list[dict[str, Any]]) -> list[Any]:
    """The bodies of the answered (200) captured requests that can be sent again as they were."""
    bodies = [_replayable(r.get("input")) for r in captured if r.get("status") == 200]
    return [b for b in bodies if b is not None]


def _decisive(answer: Any) -> dict[str, Any]:
    """The fields of an answer a replay must reproduce: labels, ids, flags (no scores or probabilities,
    which move with any retraining)."""
    if not isinstance(answer, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in answer.items():
        if isinstance(value, bool) or isinstance(value, (int, str)):
            out[key] = value
        elif isinstance(value, list) and value and all(isinstance(v, (int, str)) for v in value):
            out[key] = value
    return out


def replay_golden(captured: list[dict[str, Any]]) -> list[Any]:
    """Return a golden set from production: each answered captured request with its answer's decisive fields.

    GoldenItems; requests that cannot be replayed, or whose answer has nothing decisive, are left out.
    """
    from torchship.ops.rollout import GoldenItem

    items = []
    for r in captured:
        if r.get("status") != 200:
            continue
        body, expected = _replayable(r.get("input")), _decisive(r.get("answer"))
        if body is not None and expected:
            items.append(GoldenItem(body, expected))
    return items
