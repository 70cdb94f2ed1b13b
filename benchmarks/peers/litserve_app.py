"""LitServe peer: the same model (benchmarks/peers/common.py) behind LitServe, with its dynamic
batching and one inference worker per core.

    MODEL_KIND=mlp MODEL_DIR=<checkpoint> .venv-peers/bin/python benchmarks/peers/litserve_app.py \
        --port 9000 [--workers 2] [--batch 8] [--timeout-ms 5]

LitServe decodes a request as JSON unless told otherwise; the body here is taken as the bytes sent
(a FastAPI dependency on `decode_request`'s argument), so every server gets the same bytes (PNG
for fashion). `fast_queue` (ZeroMQ between the API server and the workers) is on: LitServe's own
advice above about 100 requests a second.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Annotated

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import litserve as ls  # noqa: E402
from fastapi import Depends, Request, Response  # noqa: E402

from benchmarks.peers.common import route  # noqa: E402


async def raw_body(request: Request) -> bytes:
    return await request.body()


Body = Annotated[bytes, Depends(raw_body)]


class ModelAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        from benchmarks.peers.common import from_env

        self.served = from_env()

    def decode_request(self, request: Body) -> bytes:
        return request

    def batch(self, inputs: list[bytes]) -> list[bytes]:
        return list(inputs)

    def predict(self, bodies: list[bytes] | bytes) -> list[tuple[int, bytes]] | tuple[int, bytes]:
        if isinstance(bodies, bytes):  # max_batch_size 1: one request, not a list
            return self.served.answer([bodies])[0]
        return self.served.answer(bodies)

    def unbatch(self, output: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        return output

    def encode_response(self, output: tuple[int, bytes]) -> Response:
        status, body = output
        return Response(content=body, status_code=status, media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timeout-ms", type=float, default=5)
    parser.add_argument("--api-servers", type=int, default=1)
    args = parser.parse_args()
    api = ModelAPI(
        max_batch_size=args.batch,
        batch_timeout=args.timeout_ms / 1000,
        api_path=route(os.environ["MODEL_KIND"]),
    )
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=args.workers, fast_queue=True, track_requests=False
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
