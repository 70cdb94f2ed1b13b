"""The usual alternative users pick: the same model in a plain FastAPI/uvicorn app.

    MODEL_DIR=<checkpoint> MODEL_KIND=mlp|fashion uvicorn benchmarks.fastapi_app:app --port 9000

It serves POST /predictions/{name} with torchship's own handler code in-process (same parsing,
same model, same answers), one request at a time, so the comparison isolates the server.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "handlers"))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402
from ts.context import Context, RequestProcessor  # noqa: E402

from torchship import archiver  # noqa: E402

torch.set_num_threads(1)
KIND = os.environ.get("MODEL_KIND", "mlp")
RUN = Path(os.environ["MODEL_DIR"])
_HANDLERS = {
    "mlp": ("mlp_handler", "MLPHandler"),
    "fashion": ("fashion_handler", "FashionHandler"),
    "sentiment": ("sentiment_handler", "SentimentHandler"),
    "recommender": ("recommender_handler", "RecommenderHandler"),
}

model_dir = Path(tempfile.mkdtemp(prefix="fastapi-model-"))
for name in ("model.safetensors", "meta.json", *archiver.EXAMPLES[KIND].run_files):
    shutil.copy(RUN / name, model_dir / name)
module, cls = _HANDLERS[KIND]
handler = getattr(__import__(module), cls)()
manifest = {"model": {"modelName": KIND, "serializedFile": "model.safetensors", "handler": f"{module}.py"}}
handler.initialize(Context(KIND, str(model_dir), manifest, 1, None, "0.12.0"))
app = FastAPI()


@app.post("/predictions/{name}")
async def predict(name: str, request: Request) -> Response:
    body = await request.body()
    ctx = Context(KIND, str(model_dir), manifest, 1, None, "0.12.0")
    ctx.request_processor = [RequestProcessor({})]
    [answer] = handler.handle([{"body": body}], ctx)
    status = ctx.get_response_status(0)[0] or 200
    return Response(content=answer, status_code=status, media_type="application/json")
