"""The model code every peer serves: torchship's own handler, run in-process without TorchServe.

The FastAPI, LitServe, BentoML and Ray Serve apps beside this file (and benchmarks/fastapi_app.py)
all call `Served.answer`: a list of request bodies in (the bytes the client sent: JSON, or PNG for
fashion), one (status, JSON bytes) answer per body out, through the same parsing, one forward pass
for the whole list and the same answers as the torchship handler inside TorchServe. Nothing here
imports TorchServe or torchship, so it runs in the peers' own virtual environment (.venv-peers,
benchmarks/peers/requirements.txt): it needs torch, numpy, pillow and safetensors only.

Each app reads what to serve from the environment: MODEL_KIND (mlp, sentiment, fashion,
recommender), MODEL_DIR (a checkpoint folder: model.safetensors, meta.json and the model's run
files, e.g. vocab.json), and TORCH_THREADS (torch threads per process; 1 unless set: with one
process per core, more threads only oversubscribe the cores).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT / "handlers") not in sys.path:
    sys.path.insert(0, str(ROOT / "handlers"))

HANDLERS = {
    "mlp": ("mlp_handler", "MLPHandler"),
    "fashion": ("fashion_handler", "FashionHandler"),
    "sentiment": ("sentiment_handler", "SentimentHandler"),
    "recommender": ("recommender_handler", "RecommenderHandler"),
}
KINDS = tuple(HANDLERS)


def route(kind: str) -> str:
    """The path every server in the benchmark answers on: TorchServe's."""
    return f"/predictions/{kind}"


class Context:
    """The part of TorchServe's `ts.context.Context` the torchship handlers use, for one batch:
    the model folder and manifest while initialising, then each request's status, content type
    and headers while answering."""

    def __init__(self, kind: str, model_dir: str, threads: int = 1, batch: int = 0) -> None:
        self.system_properties = {"model_dir": model_dir, "batch_size": max(batch, 1)}
        self.manifest = {"model": {"modelName": kind, "modelVersion": "1.0", "serializedFile": "model.safetensors"}}
        self.model_yaml_config = {"handler": {"threads": threads}}
        self.status = [200] * batch
        self.headers: list[dict[str, str]] = [{} for _ in range(batch)]

    def get_all_request_header(self, idx: int) -> dict:
        return {}

    def get_request_id(self, idx: int = 0) -> str:
        return str(idx)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.headers[idx]["Content-Type"] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.headers[idx][key] = value


class Served:
    """One example model behind torchship's handler: `answer(bodies)` -> [(status, body bytes)]."""

    def __init__(self, kind: str, model_dir: str | Path, threads: int = 1) -> None:
        if kind not in HANDLERS:
            raise ValueError(f"unknown model kind {kind!r}: one of {', '.join(KINDS)}")
        import importlib

        module, cls = HANDLERS[kind]
        self.kind, self.model_dir = kind, str(model_dir)
        self.handler = getattr(importlib.import_module(module), cls)()
        self.handler.initialize(Context(kind, self.model_dir, threads))  # sets torch's threads too

    def answer(self, bodies: list[bytes]) -> list[tuple[int, bytes]]:
        """Each body's (HTTP status, JSON answer), all of them through one forward pass."""
        context = Context(self.kind, self.model_dir, batch=len(bodies))
        out = self.handler.handle([{"body": body} for body in bodies], context)
        return [(code, bytes(body)) for code, body in zip(context.status, out)]


def from_env() -> Served:
    """The model named by MODEL_KIND / MODEL_DIR / TORCH_THREADS (see the module docstring)."""
    return Served(os.environ["MODEL_KIND"], os.environ["MODEL_DIR"], int(os.environ.get("TORCH_THREADS", "1")))
