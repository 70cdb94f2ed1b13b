"""Shared test helpers: the repo root, handlers importable as the worker imports them, a trained mlp."""

from __future__ import annotations

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
    from train import mlp

    return mlp.train(tmp_path_factory.mktemp("checkpoints"), quick=True, progress=False).run_dir


@pytest.fixture(scope="session")
def mlp_reference(mlp_run):
    """The trained mlp loaded in-process: what every served answer must equal."""
    import json

    from safetensors.torch import load_file

    import torchship_models

    meta = json.loads((mlp_run / "meta.json").read_text())
    model = torchship_models.build("mlp", meta["model"]["architecture"])
    model.load_state_dict(load_file(str(mlp_run / "model.safetensors")))
    return model.eval()
