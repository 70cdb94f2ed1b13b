"""How each example model is packed: its handler, helper files, model-config and serving defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchship.handlers import HANDLER_DIR

from .errors import ArchiveError
from .spec import ArchiveSpec

_SHARED = (
    "torchship_base_handler.py",
    "torchship_capture.py",
    "torchship_drift.py",
    "torchship_models.py",
    "torchship_oip.py",
    "torchship_signals.py",
)


@dataclass(frozen=True)
class Example:
    handler: str
    extra_files: tuple[str, ...] = _SHARED
    model_config: dict[str, Any] = field(default_factory=dict)
    # files of the training run packed beside meta.json (vocabularies, catalogs)
    run_files: tuple[str, ...] = ()
    # what `torchship deploy` registers it with unless told otherwise
    serving: dict[str, Any] = field(default_factory=dict)


_CONFIG = {"responseTimeout": 30, "startupTimeout": 60, "handler": {"threads": 1}}
_SERVING = {"batch_size": 8, "max_batch_delay": 1, "workers": 1}

EXAMPLES: dict[str, Example] = {
    "mlp": Example(handler="mlp_handler.py", model_config=_CONFIG, serving=_SERVING),
    "sentiment": Example(
        handler="sentiment_handler.py",
        extra_files=_SHARED + ("torchship_text.py",),
        model_config=_CONFIG,
        serving=_SERVING,
        run_files=("vocab.json",),
    ),
    "fashion": Example(
        handler="fashion_handler.py",
        extra_files=_SHARED + ("torchship_image.py",),
        model_config=_CONFIG,
        serving=_SERVING,
    ),
    "recommender": Example(
        handler="recommender_handler.py", model_config=_CONFIG, serving=_SERVING, run_files=("catalog.json",)
    ),
    "embedder": Example(
        handler="embedder_handler.py",
        model_config={**_CONFIG, "startupTimeout": 120},
        serving=_SERVING,
        run_files=("tokenizer.json",),
    ),
    # streamed answers: one request per batch keeps each stream's chunks flowing at once
    "textgen": Example(
        handler="textgen_handler.py",
        model_config={**_CONFIG, "responseTimeout": 120},
        serving={"batch_size": 1, "max_batch_delay": 0, "workers": 1},
        run_files=("chars.json",),
    ),
}


def example_spec(name: str, run_dir: Path, version: str) -> ArchiveSpec:
    """The spec of example model `name` from a training run folder."""
    example = EXAMPLES.get(name)
    if example is None:
        raise ArchiveError(f"no example model called {name!r}; known: {', '.join(sorted(EXAMPLES))}")
    weights, meta = checkpoint_files(run_dir)
    return ArchiveSpec(
        name=name,
        version=version,
        handler=HANDLER_DIR / example.handler,
        weights=weights,
        extra_files=tuple(HANDLER_DIR / f for f in example.extra_files)
        + (meta,)
        + tuple(Path(run_dir) / f for f in example.run_files),
        model_config=example.model_config,
    )


def checkpoint_files(run_dir: Path) -> tuple[Path, Path]:
    """(weights, meta.json) of a training run folder; ArchiveError unless both are there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArchiveError(f"checkpoint folder not found: {run_dir}")
    weights, meta = run_dir / "model.safetensors", run_dir / "meta.json"
    if not meta.is_file() or not weights.is_file():
        raise ArchiveError(f"{run_dir} is not a complete checkpoint (needs meta.json and model.safetensors)")
    return weights, meta
