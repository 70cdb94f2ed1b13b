"""A hand-built TorchServe context for unit-testing handlers without a server."""

from __future__ import annotations

import json
from pathlib import Path

from ts.context import Context, RequestProcessor


def make_context(
    model_dir: Path, serialized_file: str = "model.safetensors", yaml_config: dict | None = None, batch: int = 1
) -> Context:
    manifest = {"model": {"modelName": "t", "serializedFile": serialized_file, "handler": "h.py"}}
    ctx = Context("t", str(model_dir), manifest, batch, None, "0.12.0", model_yaml_config=yaml_config or {})
    ctx.request_processor = [RequestProcessor({}) for _ in range(batch)]
    return ctx


def statuses(ctx: Context, n: int) -> list[int]:
    return [ctx.get_response_status(i)[0] for i in range(n)]


def decoded(results) -> list:
    return [json.loads(r) for r in results]


def run_batch(handler, bodies: list, headers: list[dict] | None = None) -> tuple[Context, list]:
    """One batch through `handler.handle`, as a worker would run it: (the context, raw results)."""
    ctx = make_context(handler.model_dir, batch=len(bodies))
    if headers is not None:
        ctx.request_processor = [RequestProcessor(h or {}) for h in headers]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(bodies))}
    return ctx, handler.handle([{"body": as_received(b)} for b in bodies], ctx)


def as_received(body):
    """A body as a worker receives it: the bytes sent, in a bytearray (the handlers turn off TorchServe's
    decoding of JSON and text bodies); anything else as it is."""
    if isinstance(body, str):
        return bytearray(body.encode("utf-8"))
    return bytearray(body) if isinstance(body, bytes) else body


def run_stream(handler, bodies: list, headers: list[dict] | None = None) -> tuple[list[int], list]:
    """A streaming handler's batch in-process: (statuses, each request's whole answer). Text streams
    come back joined (the intermediate chunks TorchServe would send, then the last part); error
    answers come back decoded from JSON."""
    import ts.handler_utils.utils as ts_utils

    chunks: dict[int, list[str]] = {i: [] for i in range(len(bodies))}
    original = ts_utils.send_intermediate_predict_response

    def collect(ret, req_id_map, message, code, context=None):
        for idx in req_id_map:
            chunks[idx].append(ret[idx])

    ts_utils.send_intermediate_predict_response = collect
    try:
        ctx, results = run_batch(handler, bodies, headers)
    finally:
        ts_utils.send_intermediate_predict_response = original
    codes = statuses(ctx, len(bodies))
    answers = [
        json.loads(r) if code != 200 else "".join(chunks[i]) + r for i, (code, r) in enumerate(zip(codes, results))
    ]
    return codes, answers
