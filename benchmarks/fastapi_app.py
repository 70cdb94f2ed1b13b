"""The peer users deploy most: the same model in a FastAPI app, under uvicorn or gunicorn.

    MODEL_DIR=<checkpoint> MODEL_KIND=mlp|sentiment|fashion|recommender \
        gunicorn benchmarks.fastapi_app:app -k uvicorn.workers.UvicornWorker -w 2 --bind 127.0.0.1:9000

(from .venv-peers, benchmarks/peers/requirements.txt). It serves POST /predictions/{name} with
torchship's own handler code in-process (benchmarks/peers/common.py: same parsing, same model,
same answers, the same request bytes), one request at a time per process: one process per core,
one torch thread each. `async def` on purpose: the handler's work is a fraction of a millisecond,
so handing it to a thread pool (a plain `def` endpoint) costs more than it frees the event loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import FastAPI, Request, Response  # noqa: E402

from benchmarks.peers.common import from_env  # noqa: E402

served = from_env()
app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/predictions/{name}")
async def predict(name: str, request: Request) -> Response:
    [(status, answer)] = served.answer([await request.body()])
    return Response(content=answer, status_code=status, media_type="application/json")
