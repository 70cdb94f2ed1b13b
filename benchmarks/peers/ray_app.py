"""Ray Serve peer: the same model (benchmarks/peers/common.py) as a Ray Serve deployment, with
`@serve.batch` and one replica per core.

    MODEL_KIND=mlp MODEL_DIR=<checkpoint> .venv-peers/bin/python benchmarks/peers/ray_app.py \
        --port 9000 [--replicas 2] [--batch 8] [--timeout-ms 5]

Starts a local Ray (no dashboard, nothing sent anywhere), deploys, and serves until stopped
(SIGTERM/SIGINT). The replica reads the body as the bytes sent (a Starlette request), so every
server gets the same bytes (PNG for fashion).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers.common import route  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--replicas", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--timeout-ms", type=float, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_ENABLE_TASK_EVENTS", "0")

    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    # workers inherit this environment: MODEL_KIND, MODEL_DIR and TORCH_THREADS reach the replicas
    ray.init(
        num_cpus=len(os.sched_getaffinity(0)),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )

    @serve.deployment(
        num_replicas=args.replicas,
        ray_actor_options={"num_cpus": 0},  # share the cores with the proxy, as processes do elsewhere
        max_ongoing_requests=64,
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    class Model:
        def __init__(self) -> None:
            sys.path.insert(0, str(ROOT))
            from benchmarks.peers.common import from_env

            self.served = from_env()

        @serve.batch(max_batch_size=args.batch, batch_wait_timeout_s=args.timeout_ms / 1000)
        async def answer(self, bodies: list[bytes]) -> list[tuple[int, bytes]]:
            return self.served.answer(bodies)

        async def __call__(self, request: Request) -> Response:
            status, body = await self.answer(await request.body())
            return Response(content=body, status_code=status, media_type="application/json")

    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config={"log_level": "WARNING"})
    serve.run(Model.bind(), name="model", route_prefix=route(os.environ["MODEL_KIND"]))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
