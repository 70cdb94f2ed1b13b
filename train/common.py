"""What every training script shares: run folders, lineage (meta.json), progress, seeding, and the
training epoch step (`shuffled_batches`, `train_epoch`)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file

__all__ = [
    "Progress",
    "RunResult",
    "fingerprint_files",
    "fingerprint_tensors",
    "git_commit",
    "latest_run",
    "new_run_dir",
    "save_weights",
    "seed_everything",
    "shuffled_batches",
    "train_epoch",
    "write_checkpoint",
]

B = TypeVar("B")


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    seconds: float


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches: the indices 0..count-1 in an order drawn from `generator` (drawn now,
    before any batch is trained), cut into batches of `batch_size` (the last may be shorter)."""
    order = torch.randperm(count, generator=generator)
    return [order[start : start + batch_size] for start in range(0, count, batch_size)]


def train_epoch(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    batches: Iterable[B],
    loss_of: Callable[[B], torch.Tensor],
    *,
    size: Callable[[B], int] = len,
    clip_norm: float | None = None,
) -> float:
    """One training epoch: the model in training mode, then for each batch its loss
    (`loss_of(batch)`, a mean over the batch), the gradients, optionally clipped to `clip_norm`,
    and one optimiser step. Returns the mean training loss, each batch weighted by `size(batch)`
    (its examples by default). `batches` may be lazy: each is drawn just before it is trained."""
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        loss = loss_of(batch)
        optimiser.zero_grad()
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimiser.step()
        weight = size(batch)
        total += loss.item() * weight
        count += weight
    return total / count


def new_run_dir(checkpoints: Path, name: str) -> Path:
    """A fresh folder checkpoints/NAME/<UTC time>[-n]; run names sort by creation time."""
    base = checkpoints / name
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        run = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder under {base}")


def latest_run(checkpoints: Path, name: str) -> Path | None:
    """The newest complete run of a model (one with meta.json), or None."""
    base = checkpoints / name
    runs = sorted(p for p in base.glob("*") if (p / "meta.json").is_file()) if base.is_dir() else []
    return runs[-1] if runs else None


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the code that trained (with '+dirty' for uncommitted changes), if in git."""
    cwd = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def fingerprint_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_checkpoint(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    kind: str,
    architecture: dict[str, Any],
    hyper_parameters: dict[str, Any],
    data: dict[str, Any],
    metrics: dict[str, float],
    history: list[dict[str, float]],
    seed: int,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights then meta.json; meta.json last, so a run without it is incomplete."""
    weights = save_weights(run_dir, model)
    meta = {
        "name": kind,
        "run": run_dir.name,
        "model": {"kind": kind, "architecture": architecture},
        "hyper_parameters": hyper_parameters,
        "data": data,
        "weights": weights,
        "metrics": metrics,
        "history": history,
        "seed": seed,
        "training_seconds": round(seconds, 2),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    plot_history(history, run_dir / "training_curve.png", title=f"{kind} ({run_dir.name})")
    tmp = run_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "meta.json")


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Losses on the left, other metrics on the right, per epoch (a PNG beside the checkpoint)."""
    if not history:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [h["epoch"] for h in history]
    keys = [k for k in history[0] if k != "epoch"]
    losses = [k for k in keys if "loss" in k]
    others = [k for k in keys if k not in losses]
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(10 if others else 5, 3.6), squeeze=False)
    for ax, group, label in ((axes[0][0], losses, "loss"), *(((axes[0][1], others, "metric"),) if others else ())):
        for k in group:
            ax.plot(epochs, [h[k] for h in history], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_weights(run_dir: Path, model_or_state) -> dict[str, Any]:
    """Write model.safetensors and record its sha256 (packaging then need not hash it again)."""
    from torchship.archiver.digests import record_digest

    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    state = {k: v.detach().contiguous() for k, v in state.items()}
    path = run_dir / "model.safetensors"
    save_file(state, str(path))
    return {"file": path.name, "sha256": record_digest(path), "size": path.stat().st_size}


class Progress:
    """One line per step on stderr, redrawn in place on a terminal: `name  epoch 3/10 [###...] loss 0.42`."""

    def __init__(self, name: str, total: int, stream=None) -> None:
        self.name, self.total = name, total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()

    def update(self, step: int, **figures: float) -> None:
        width = 20
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        text = "  ".join(f"{k} {v:.4f}" for k, v in figures.items())
        line = f"{self.name}  epoch {step}/{self.total} [{bar}] {text}  {time.monotonic() - self.start:.1f}s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
