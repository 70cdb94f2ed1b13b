"""The desired state of a deployment (deploy.yaml), and the plan that converges a server to it.

    models:
      mlp:
        versions: ["1.0", "2.0"]     # archives model_store/mlp-<v>.mar
        default: "2.0"
        workers: {min: 1, max: 1}
        batch_size: 8
        max_batch_delay_ms: 1

`plan` compares the file with the live server and lists the actions; `apply` runs them in a safe
order: register what is missing (verified first), fix workers, recreate versions whose batching
changed, set the default, and only then unregister versions no longer listed, so the version
serving traffic is never removed before its successor serves. Models the file does not name are
left alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from torchship.archiver.names import InvalidName, check_name, check_version
from torchship.ops.takedown import take_down
from torchship.sdk.errors import ConfigError, ModelNotFound, TorchServeError
from torchship.sdk.types import ModelDescription

if TYPE_CHECKING:
    from torchship.ops.deploy import DeployResult
    from torchship.ops.registry import Registry
    from torchship.sdk.client import TorchServe

__all__ = ["ModelState", "DesiredState", "Action", "plan", "apply", "ApplyReport", "load_desired", "InvalidDesiredName"]


class InvalidDesiredName(ConfigError, InvalidName):
    """A model name or version in a desired-state file that the one rule (archiver.names) refuses.

    It is a ConfigError of the file, and bad input (a ValueError: CLI exit 7) like a bad name anywhere.
    """


def _version(value: Any, here: str) -> str:
    """A version as written in the file: a string, or a YAML number (1.0 reads as a float; quote
    versions like "1.10" that a number would change), checked by the one rule."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidDesiredName(f'{here}: invalid version {value!r}: write it as a string, e.g. "1.0"')
    try:
        return check_version(str(value))
    except InvalidName as exc:
        raise InvalidDesiredName(f"{here}: {exc}") from None


@dataclass(frozen=True)
class ModelState:
    """One model's entry of the desired state: versions, default, workers and batching."""

    name: str
    versions: tuple[str, ...]
    default: str
    min_workers: int = 1
    max_workers: int = 1
    batch_size: int = 1
    max_batch_delay_ms: int = 100
    # sampled capture of every listed version (torchship.ops.capture's settings), or None: left as it is
    capture: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as it is written in deploy.yaml."""
        out: dict[str, Any] = {
            "versions": list(self.versions),
            "default": self.default,
            "workers": {"min": self.min_workers, "max": self.max_workers},
            "batch_size": self.batch_size,
            "max_batch_delay_ms": self.max_batch_delay_ms,
        }
        if self.capture is not None:
            out["capture"] = _capture_yaml(self.capture)
        return out


@dataclass(frozen=True)
class DesiredState:
    """A parsed desired-state file: the models it names, by name."""

    models: dict[str, ModelState] = field(default_factory=dict)

    def to_yaml(self) -> str:
        """Return the desired state as deploy.yaml text."""
        return yaml.safe_dump({"models": {n: m.to_dict() for n, m in self.models.items()}}, sort_keys=False)


def load_desired(path: str | os.PathLike[str]) -> DesiredState:
    """Read and check a desired-state file (deploy.yaml); ConfigError when it is not valid."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_desired(raw, str(path))


def parse_desired(raw: Any, where: str = "deploy.yaml") -> DesiredState:
    """Check parsed YAML against the desired-state schema; `where` names the source in errors."""
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict) or not raw["models"]:
        raise ConfigError(f"{where}: expected a top-level 'models:' mapping with at least one model")
    unknown_top = set(raw) - {"models"}
    if unknown_top:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown_top)}")
    models = {}
    for name, spec in raw["models"].items():
        here = f"{where}: models.{name}"
        try:
            check_name(name)
        except InvalidName as exc:
            raise InvalidDesiredName(f"{where}: {exc}") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"{here}: expected a mapping")
        unknown = set(spec) - {"versions", "default", "workers", "batch_size", "max_batch_delay_ms", "capture"}
        if unknown:
            raise ConfigError(f"{here}: unknown key(s) {sorted(unknown)}")
        versions = spec.get("versions")
        if not isinstance(versions, list) or not versions:
            raise ConfigError(f'{here}.versions: a non-empty list of versions, e.g. ["1.0"]')
        versions = [_version(v, f"{here}.versions") for v in versions]
        if len(set(versions)) != len(versions):
            raise ConfigError(f"{here}.versions: a version is listed twice")
        default = _version(spec.get("default", versions[-1]), f"{here}.default")
        if default not in versions:
            raise ConfigError(f"{here}.default: {default} is not among the versions {versions}")
        workers = spec.get("workers", {"min": 1, "max": 1})
        if isinstance(workers, int) and not isinstance(workers, bool):
            workers = {"min": workers, "max": workers}
        if not isinstance(workers, dict) or set(workers) - {"min", "max"}:
            raise ConfigError(f"{here}.workers: expected {{min: N, max: M}}")
        lo: Any = workers.get("min", 1)  # YAML: checked below
        hi: Any = workers.get("max", lo)
        batch, delay = spec.get("batch_size", 1), spec.get("max_batch_delay_ms", 100)
        for label, value, least in (
            ("workers.min", lo, 0),
            ("workers.max", hi, 1),
            ("batch_size", batch, 1),
            ("max_batch_delay_ms", delay, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{here}.{label}: an integer >= {least}, not {value!r}")
        if lo > hi:
            raise ConfigError(f"{here}.workers: min ({lo}) is above max ({hi})")
        capture = _capture_settings(spec["capture"], f"{here}.capture") if "capture" in spec else None
        models[name] = ModelState(name, tuple(versions), default, lo, hi, batch, delay, capture)
    return DesiredState(models)


_MIB = 1024 * 1024


def _capture_settings(raw: Any, here: str) -> dict[str, Any]:
    """deploy.yaml's `capture: {sample: F, redact: {field: hash|drop}, max_mb: N, file_mb: N, drift_every_s: S}`
    checked, as the worker's settings (torchship_capture.check_settings)."""
    from torchship.handlers import torchship_capture

    if not isinstance(raw, dict) or set(raw) - {"sample", "redact", "max_mb", "file_mb", "drift_every_s"}:
        raise ConfigError(
            f"{here}: expected {{sample: F, redact: {{FIELD: hash|drop}}, max_mb: N, file_mb: N, drift_every_s: S}}"
        )
    settings = {"sample": raw.get("sample", 0), "redact": raw.get("redact") or {}}
    if "drift_every_s" in raw:
        settings["drift_every_s"] = raw["drift_every_s"]
    for key in ("max_mb", "file_mb"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{here}.{key}: a whole number of MiB >= 1, not {value!r}")
            settings[key.replace("_mb", "_bytes")] = value * _MIB
    try:
        return torchship_capture.check_settings(settings)
    except ValueError as exc:
        raise ConfigError(f"{here}: {exc}") from None


def _capture_yaml(settings: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"sample": settings["sample"]}
    if settings.get("redact"):
        out["redact"] = dict(settings["redact"])
    out["max_mb"] = settings["max_bytes"] // _MIB
    out["file_mb"] = settings["file_bytes"] // _MIB
    out["drift_every_s"] = settings["drift_every_s"]
    return out


# ---------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Action:
    """One step of a plan: register, recreate, scale, set-default or unregister a model version."""

    kind: str  # register | recreate | scale | set-default | unregister
    model: str
    version: str
    detail: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __str__(self) -> str:
        return f"{self.kind:12} {self.model} {self.version}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """Return the action as plain data (for --json)."""
        return {"action": self.kind, "model": self.model, "version": self.version, "detail": self.detail}


_ORDER = {"register": 0, "recreate": 1, "scale": 2, "set-default": 3, "unregister": 4}


def _live(client: TorchServe, name: str) -> dict[str, ModelDescription]:
    try:
        return {d.version: d for d in client.versions(name)}
    except ModelNotFound:
        return {}


def plan(client: TorchServe, desired: DesiredState) -> list[Action]:
    """What `apply` would do, in the order it would do it. Empty when the server already matches."""
    actions: list[Action] = []
    for name, want in desired.models.items():
        live = _live(client, name)
        reg = {
            "workers": want.min_workers,
            "max_workers": want.max_workers,
            "batch_size": want.batch_size,
            "max_batch_delay": want.max_batch_delay_ms,
        }
        current_default = next((v for v, d in live.items() if d.is_default), None)
        for version in want.versions:
            have = live.get(version)
            if have is None:
                actions.append(
                    Action(
                        "register",
                        name,
                        version,
                        f"workers {want.min_workers}-{want.max_workers}, batch {want.batch_size}"
                        f" / {want.max_batch_delay_ms} ms",
                        reg,
                    )
                )
                continue
            if (have.batch_size, have.max_batch_delay) != (want.batch_size, want.max_batch_delay_ms):
                actions.append(
                    Action(
                        "recreate",
                        name,
                        version,
                        f"batch {have.batch_size} / {have.max_batch_delay} ms -> {want.batch_size} / "
                        f"{want.max_batch_delay_ms} ms (TorchServe cannot change batching in place)",
                        {**reg, "was_default": have.is_default},
                    )
                )
            elif (have.min_workers, have.max_workers) != (
                want.min_workers,
                want.max_workers,
            ) or have.ready_workers < want.min_workers:
                actions.append(
                    Action(
                        "scale",
                        name,
                        version,
                        f"workers {have.min_workers}-{have.max_workers} ({have.ready_workers} ready) -> "
                        f"{want.min_workers}-{want.max_workers}",
                        reg,
                    )
                )
        if current_default != want.default:
            actions.append(Action("set-default", name, want.default, f"default {current_default} -> {want.default}"))
        for version in live:
            if version not in want.versions:
                try:
                    check_version(version)
                except InvalidName as exc:  # registered by other means: nothing torchship sends can name it
                    raise TorchServeError(
                        f"{name} has a registered version that torchship cannot address, so "
                        f"apply cannot remove it ({exc}); unregister it by other means"
                    ) from None
                actions.append(Action("unregister", name, version, "no longer listed"))
    return sorted(actions, key=lambda a: (_ORDER[a.kind], a.model))


# ---------------------------------------------------------------------- apply


@dataclass
class ApplyReport:
    """What `apply` did: the actions done, the one that failed (with its error) and those not tried."""

    done: list[Action] = field(default_factory=list)
    not_done: list[Action] = field(default_factory=list)
    failed: Action | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every action of the plan was applied."""
        return self.failed is None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (for --json)."""
        return {
            "ok": self.ok,
            "done": [a.to_dict() for a in self.done],
            "failed": self.failed.to_dict() if self.failed else None,
            "error": self.error,
            "not_done": [a.to_dict() for a in self.not_done],
        }


def apply(
    client: TorchServe,
    store: Path,
    desired: DesiredState,
    *,
    public_key: Path | None,
    registry: Registry | None = None,
    timeout: float = 120.0,
    progress: Callable[[Action], None] | None = None,
    model_keys: Path | None = None,
) -> ApplyReport:
    """Run the plan, stopping at the first failure; the report says what was and was not applied.

    The default keeps serving (unregistering comes last).
    """
    from torchship.ops.deploy import deploy

    actions = plan(client, desired)
    report = ApplyReport()
    for i, action in enumerate(actions):
        if progress:
            progress(action)
        try:
            _run(client, store, action, public_key=public_key, timeout=timeout, deploy=deploy, model_keys=model_keys)
        except (TorchServeError, ValueError) as exc:
            report.failed, report.error, report.not_done = action, str(exc), actions[i + 1 :]
            if registry:
                registry.record(action.model, action.version, "apply_failed", action=action.kind, error=str(exc))
            return report
        report.done.append(action)
        if registry:
            kind = {
                "register": "registered",
                "recreate": "registered",
                "scale": "scaled",
                "set-default": "default_set",
                "unregister": "unregistered",
            }[action.kind]
            registry.record(action.model, action.version, kind, via="apply", detail=action.detail)
    return report


def _run(
    client: TorchServe,
    store: Path,
    action: Action,
    *,
    public_key: Path | None,
    timeout: float,
    deploy: Callable[..., DeployResult],
    model_keys: Path | None = None,
) -> None:
    p = action.params

    def register() -> None:  # verified, registered with its batching, ready (a worker at least)
        deploy(
            client,
            store,
            action.model,
            action.version,
            workers=max(p["workers"], 1),
            batch_size=p["batch_size"],
            max_batch_delay=p["max_batch_delay"],
            timeout=timeout,
            public_key=public_key,
            model_keys=model_keys,
        )

    if action.kind == "register":
        register()
        if p["workers"] != max(p["workers"], 1) or p["max_workers"] != max(p["workers"], 1):
            client.scale(action.model, version=action.version, min_workers=p["workers"], max_workers=p["max_workers"])
    elif action.kind == "recreate":
        if p.get("was_default"):
            raise TorchServeError(
                f"{action.model} {action.version} is the default and serves traffic: its batching "
                "cannot be changed in place without dropping requests. Package the same model as "
                "a new version with the new batching, list it, and make it the default"
            )
        take_down(client, action.model, action.version)
        register()
    elif action.kind == "scale":
        client.scale(action.model, version=action.version, min_workers=p["workers"], max_workers=p["max_workers"])
        if p["workers"]:
            client.wait_until_ready(action.model, action.version, timeout=timeout)
    elif action.kind == "set-default":
        client.set_default(action.model, action.version)
    elif action.kind == "unregister":
        take_down(client, action.model, action.version)


def merge_settings(path: Path, name: str, settings: dict[str, Any]) -> DesiredState:
    """Write `settings` as model `name`'s entry of the desired-state file `path`, keeping everything else.

    `settings` are workers and batching, and versions and default only where the file has none. The result is
    parsed first, so a file `apply` would refuse is never written; the write is atomic.
    """
    import tempfile

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {"models": {}}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a top-level 'models:' mapping")
    current = (doc.get("models") or {}).get(name) or {}
    doc.setdefault("models", {})[name] = {
        **current,
        **{k: v for k, v in settings.items() if k not in ("versions", "default") or k not in current},
    }
    desired = parse_desired(doc, str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return desired
