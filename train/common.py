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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file

from .errors import TrainingError

__all__ = [
    "WEIGHTS_NAME",
    "HeldOut",
    "Progress",
    "RunResult",
    "describe_files",
    "drift_reference",
    "fingerprint_files",
    "fingerprint_tensors",
    "git_commit",
    "git_state",
    "is_complete_run",
    "latest_run",
    "new_run_dir",
    "save_weights",
    "seed_everything",
    "shuffled_batches",
    "train_epoch",
    "weights_state",
    "write_checkpoint",
]

WEIGHTS_NAME = "model.safetensors"

B = TypeVar("B")


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class HeldOut:
    """A training run's held-out data, as functions of a model (for `torchship package --optimize`'s
    accuracy gate and benchmarks/bench_optimize.py): `metric(model)` is the figure training reports on
    it (`name`; higher is better), `inputs(n)` the forward arguments of its first n examples."""

    name: str
    size: int
    metric: Callable[[torch.nn.Module], float]
    inputs: Callable[[int], tuple[torch.Tensor, ...]]


def drift_reference(kind: str, signals: dict[str, list[Any]], held_out: int) -> dict[str, Any]:
    """The drift reference a checkpoint records in meta.json (`reference`): each drift signal of the
    held-out data (the handler's signals of each example, and the trained model's predictions on it),
    described as `torchship drift` compares live traffic with it (handlers/torchship_signals.py)."""
    from torchship.handlers import torchship_signals

    return torchship_signals.reference(kind, signals, held_out)


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


def is_complete_run(run_dir: Path) -> bool:
    """Whether a folder holds a whole checkpoint: weights and meta.json (written last)."""
    return (run_dir / "meta.json").is_file() and (run_dir / WEIGHTS_NAME).is_file()


def latest_run(checkpoints: Path, name: str | None = None) -> Path | None:
    """The newest complete run (one with weights and meta.json) in `checkpoints/NAME`, or in
    `checkpoints` itself without a name; None when there is none.

    Newest by the `created` time its meta.json records, then by folder name (`new_run_dir`'s
    UTC stamps, `-n` compared as a number): a run renamed or copied keeps its place."""
    base = checkpoints / name if name else checkpoints
    runs = [p for p in base.iterdir() if p.is_dir() and is_complete_run(p)] if base.is_dir() else []
    return max(runs, key=_run_order) if runs else None


def _run_order(run: Path) -> tuple[float, str, int]:
    created = 0.0
    try:
        stamp = json.loads((run / "meta.json").read_text(encoding="utf-8")).get("created")
        created = datetime.fromisoformat(str(stamp)).timestamp()
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no usable time: ordered by name among the others
    stem, _, n = run.name.rpartition("-")
    return (created, stem, int(n)) if stem and n.isdigit() else (created, run.name, 0)


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the code that trained (with '+dirty' for uncommitted changes), if in git."""
    commit, dirty = git_state(start or Path(__file__).resolve().parent)
    return None if commit is None else commit + ("+dirty" if dirty else "")


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """(HEAD's commit, whether tracked files differ from it) of the git work tree around `folder`;
    (None, None) outside git, in a repository without commits, or without git."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=False, timeout=10)

    try:
        head = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        commit = head.stdout.strip()
        if head.returncode != 0 or not commit:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
        if status.returncode != 0:
            return commit, None
        return commit, bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def fingerprint_files(paths: list[Path]) -> str:
    """The data fingerprint of training files: sha256 over each file's name and bytes, in path order."""
    return describe_files(paths)[1]


def describe_files(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], str]:
    """Each file's sha256 and size, and their fingerprint (`fingerprint_files`), reading each file once.

    Entries are in path order: {"path": str(path), "sha256": hex, "bytes": size}."""
    digest = hashlib.sha256()
    entries: list[dict[str, Any]] = []
    for path in sorted(Path(p) for p in paths):
        own = hashlib.sha256()
        size = 0
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                own.update(block)
                size += len(block)
        entries.append({"path": str(path), "sha256": own.hexdigest(), "bytes": size})
    return entries, "sha256:" + digest.hexdigest()


def write_checkpoint(
    run_dir: Path,
    *,
    model: torch.nn.Module | Mapping[str, Any],
    kind: str,
    architecture: dict[str, Any] | None,
    hyper_parameters: dict[str, Any],
    data: dict[str, Any],
    metrics: dict[str, float],
    history: list[dict[str, float]],
    seed: int | None,
    seconds: float | None,
    extra: dict[str, Any] | None = None,
    name: str | None = None,
    git_dir: Path | None = None,
) -> dict[str, Any]:
    """Write the weights, then meta.json (atomically, last: a run without it is incomplete); returns meta.

    The one writer of checkpoints: the example trainers and `torchship.checkpoint.save` both call it,
    so every checkpoint has the same lineage. `name` is the model's name (default: `kind`); `git_dir`
    a folder in the repository of the code that trained (default: this package's own folder, for the
    example trainers)."""
    weights = save_weights(run_dir, model)
    commit, dirty = git_state(git_dir or Path(__file__).resolve().parent)
    meta = {
        "name": name or kind,
        "run": run_dir.name,
        "model": {"kind": kind, "architecture": architecture},
        "hyper_parameters": hyper_parameters,
        "data": data,
        "weights": weights,
        "metrics": metrics,
        "history": history,
        "seed": seed,
        "training_seconds": None if seconds is None else round(seconds, 2),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "git_commit": None if commit is None else commit + ("+dirty" if dirty else ""),
        "git_dirty": dirty,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    plot_history(history, run_dir / "training_curve.png", title=f"{name or kind} ({run_dir.name})")
    tmp = run_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "meta.json")
    return meta


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
    epochs = [h.get("epoch", i) for i, h in enumerate(history, 1)]
    keys = list(dict.fromkeys(k for h in history for k in h if k != "epoch"))
    losses = [k for k in keys if "loss" in k]
    others = [k for k in keys if k not in losses]
    if not keys:
        return
    panels = [(group, label) for group, label in ((losses, "loss"), (others, "metric")) if group]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (group, label) in zip(axes[0], panels):
        for k in group:
            points = [(e, h[k]) for e, h in zip(epochs, history) if k in h]
            ax.plot([e for e, _ in points], [v for _, v in points], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def weights_state(model_or_state: torch.nn.Module | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors to save: a module's state_dict (or a given one), detached and contiguous, ready for
    safetensors. Tied weights (one tensor under two names, as a language model's embedding and output
    layer) and other tensors whose memory overlaps are saved once per name, each its own copy, so
    `load_state_dict` restores them. TrainingError for an entry that is not a tensor (safetensors
    holds tensors only: no pickled objects, no `get_extra_state`)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    if not isinstance(state, Mapping):
        raise TrainingError(f"expected a torch.nn.Module or a state_dict, not {type(model_or_state).__name__}")
    out: dict[str, torch.Tensor] = {}
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TrainingError(f"state_dict key {key!r} is not a string: safetensors names tensors by strings")
        if not isinstance(value, torch.Tensor):
            raise TrainingError(
                f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor: safetensors holds "
                "tensors only (store other things in hyper_parameters or architecture)"
            )
        if value.is_sparse or value.layout != torch.strided:
            raise TrainingError(f"state_dict entry {key!r} is a {value.layout} tensor: save it dense")
        tensor = value.detach().contiguous()
        if tensor.numel():
            storage = tensor.untyped_storage()
            start = storage.data_ptr() + tensor.storage_offset() * tensor.element_size()
            span = (start, start + tensor.numel() * tensor.element_size())
            taken = spans.setdefault((str(tensor.device), storage.data_ptr()), [])
            if any(span[0] < end and begin < span[1] for begin, end in taken):
                tensor = tensor.clone()  # shares memory with an earlier entry (tied weights): its own copy
            else:
                taken.append(span)
        out[key] = tensor
    return out


def save_weights(run_dir: Path, model_or_state: torch.nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """Write model.safetensors (see `weights_state`) and record its sha256 (packaging then need not
    hash it again); returns {"file", "sha256", "size"} for meta.json."""
    from torchship.archiver.digests import record_digest

    state = weights_state(model_or_state)
    path = run_dir / WEIGHTS_NAME
    tmp = run_dir / (WEIGHTS_NAME + ".tmp")
    try:
        save_file(state, str(tmp))
    except (RuntimeError, ValueError, TypeError) as exc:  # what safetensors raises for what it cannot hold
        tmp.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"cannot save the weights as safetensors: {first}") from None
    os.replace(tmp, path)
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
