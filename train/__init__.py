"""Training scripts, one per example model; each writes checkpoints/NAME/<run>/.

A run folder holds `model.safetensors` (weights, no pickle) and `meta.json` (the lineage:
architecture, hyper-parameters, data fingerprint, metrics, seed, torch version, git commit, time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .common import RunResult


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


__all__ = ["trainers", "RunResult"]
