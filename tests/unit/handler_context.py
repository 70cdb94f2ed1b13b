"""A hand-built TorchServe context for unit-testing handlers without a server."""

from __future__ import annotations

import json
from pathlib import Path

from ts.context import Context, RequestProcessor


def make_context(model_dir: Path, serialized_file: str = "model.safetensors", yaml_config: dict | None = None,
                 batch: int = 1) -> Context:
    manifest = {"model": {"modelName": "t", "serializedFile": serialized_file, "handler": "h.py"}}
    ctx = Context("t", str(model_dir), manifest, batch, None, "0.12.0", model_yaml_config=yaml_config or {})
    ctx.request_processor = [RequestProcessor({}) for _ in range(batch)]
    return ctx



def statuses(ctx: Context, n: int) -> list[int]:
    return [ctx.get_response_status(i)[0] for i in range(n)]


def decoded(results) -> list:
    return [json.loads(r) for r in results]
