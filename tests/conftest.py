"""Shared test helpers: the repo root, handlers importable as the worker imports them, a trained mlp."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "handlers"
# In a worker, handler files are top-level modules; tests import them the same way.
if str(HANDLERS) not in sys.path:
    sys.path.insert(0, str(HANDLERS))


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory) -> Path:
    """A quick-trained mlp checkpoint folder, shared by every test of the session."""
    from torchship.train import mlp

    return mlp.train(tmp_path_factory.mktemp("checkpoints"), quick=True, progress=False).run_dir


def reference_model(run_dir: Path):
    """An mlp training run's model loaded in-process, in eval mode."""
    import torchship_models
    from safetensors.torch import load_file

    meta = json.loads((run_dir / "meta.json").read_text())
    model = torchship_models.build("mlp", meta["model"]["architecture"])
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.eval()


@pytest.fixture(scope="session")
def mlp_reference(mlp_run):
    """The trained mlp loaded in-process: what every served answer must equal."""
    return reference_model(mlp_run)


def _quick_run(tmp_path_factory, name):
    from torchship.train import trainers

    return trainers()[name](tmp_path_factory.mktemp(f"ck-{name}"), quick=True, progress=False).run_dir


@pytest.fixture(scope="session")
def sentiment_run(tmp_path_factory) -> Path:
    """sentiment trained as CI trains it (--quick)."""
    return _quick_run(tmp_path_factory, "sentiment")


@pytest.fixture(scope="session")
def fashion_run(tmp_path_factory) -> Path:
    return _quick_run(tmp_path_factory, "fashion")


@pytest.fixture(scope="session")
def recommender_run(tmp_path_factory) -> Path:
    return _quick_run(tmp_path_factory, "recommender")


@pytest.fixture(scope="session")
def embedder_run(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 imported into a checkpoint (no training)."""
    return _quick_run(tmp_path_factory, "embedder")


@pytest.fixture(scope="session")
def textgen_run(tmp_path_factory) -> Path:
    """A briefly trained text generator: enough to stream text, not to read well."""
    from torchship.train import textgen

    return textgen.train(tmp_path_factory.mktemp("ck-textgen"), epochs=1, steps_per_epoch=30, progress=False).run_dir


def load_handler(run_dir, module_name, class_name, tmp_path_factory):
    """A handler initialised from a run folder, as the worker would from the unpacked archive."""
    import importlib
    import shutil

    from tests.unit.handler_context import make_context
    from torchship.archiver import EXAMPLES

    name = json.loads((run_dir / "meta.json").read_text())["name"]
    model_dir = tmp_path_factory.mktemp(f"{name}-model")
    for f in ("model.safetensors", "meta.json", *EXAMPLES[name].run_files):
        shutil.copy(run_dir / f, model_dir / f)
    handler = getattr(importlib.import_module(module_name), class_name)()
    handler.initialize(make_context(model_dir))
    return handler
