"""BentoML peer: the same model (benchmarks/peers/common.py) as a BentoML service, with its
adaptive batching and one worker process per core.

    MODEL_KIND=mlp MODEL_DIR=<checkpoint> BENTO_WORKERS=2 BENTO_BATCH=8 BENTO_LATENCY_MS=1000 \
        .venv-peers/bin/bentoml serve benchmarks.peers.bentoml_app:Model --host 127.0.0.1 --port 9000

BentoML reads a request as JSON (or multipart); the body here is taken as the bytes sent (an
IODescriptor of its own, BentoML's extension point for input types), so every server gets the same
bytes (PNG for fashion). With `batchable=True` each request is one item of a list, and BentoML's
dispatcher gathers the requests that arrive together into one call (one forward pass).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bentoml  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402

from benchmarks.peers.common import route  # noqa: E402

KIND = os.environ.get("MODEL_KIND", "mlp")


class Bodies(bentoml.IODescriptor):
    """A request's body, as sent: a list of one item, as batchable APIs take."""

    bodies: list[bytes]

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Bodies:
        return cls.model_construct(bodies=[await request.body()])


class Answers(bentoml.IODescriptor):
    """A request's (status, JSON body) answer, written as it is."""

    answers: list[Any]

    @classmethod
    async def to_http_response(cls, obj: Any, serde: Any) -> Response:
        [(status, body)] = obj
        return Response(content=body, status_code=status, media_type="application/json")


@bentoml.service(
    workers=int(os.environ.get("BENTO_WORKERS", len(os.sched_getaffinity(0)))),
    threads=1,
    logging={"access": {"enabled": False}},
)
class Model:
    def __init__(self) -> None:
        from benchmarks.peers.common import from_env

        self.served = from_env()

    @bentoml.api(
        route=route(KIND),
        input_spec=Bodies,
        output_spec=Answers,
        batchable=True,
        max_batch_size=int(os.environ.get("BENTO_BATCH", "8")),
        max_latency_ms=int(os.environ.get("BENTO_LATENCY_MS", "1000")),
    )
    def predict(self, bodies: list[bytes]) -> list[tuple[int, bytes]]:
        return self.served.answer(bodies)
