"""Training scripts, one per example model; each writes checkpoints/NAME/<run>/.

A run folder holds `model.safetensors` (weights, no pickle) and `meta.json` (the lineage:
architecture, hyper-parameters, data fingerprint, metrics, seed, torch version, git commit, time).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .common import HeldOut, RunResult


def __getattr__(name: str) -> Any:
    # RunResult lives beside torch (train.common): imported when asked for, so that importing
    # `train` (its errors, for every torchship command) does not import torch
    if name == "RunResult":
        from .common import RunResult

        return RunResult
    raise AttributeError(f"module 'train' has no attribute {name!r}")


def trainers() -> dict[str, Callable[..., RunResult]]:
    """Name -> train function. Imported lazily so `torchship --help` does not import torch."""
    from . import embedder, fashion, mlp, recommender, sentiment, textgen

    return {
        "mlp": mlp.train,
        "sentiment": sentiment.train,
        "fashion": fashion.train,
        "recommender": recommender.train,
        "embedder": embedder.train,
        "textgen": textgen.train,
    }


def held_out(name: str, run_dir: Path) -> HeldOut:
    """The held-out data of example model `name`'s training run `run_dir` (see `common.HeldOut`):
    what `torchship package --optimize` gates a cheaper variant on. TrainingError for a model without one."""
    from . import embedder, fashion, mlp, recommender, sentiment
    from .errors import TrainingError

    sets: dict[str, Callable[[Path], HeldOut]] = {
        "mlp": mlp.held_out,
        "sentiment": sentiment.held_out,
        "fashion": fashion.held_out,
        "recommender": recommender.held_out,
        "embedder": embedder.held_out,
    }
    if name not in sets:
        raise TrainingError(f"{name} has no held-out metric to gate on (the example models {', '.join(sets)} do)")
    return sets[name](Path(run_dir))


__all__ = ["trainers", "held_out", "RunResult"]
