"""The serving benchmark's peers (benchmarks/peers/): fast, no servers.

Every peer (FastAPI, LitServe, BentoML, Ray Serve) serves `benchmarks.peers.common.Served`, so the
comparison is fair only if that answers exactly as the torchship handler does inside TorchServe on
the same bytes: checked here for the four benchmarked models. The peers' frameworks live in
.venv-peers, not here; the FastAPI app is checked through its test client only where FastAPI is
importable. Then the benchmark's pure helpers: the peers' command lines, CPU per request, and
the verdicts against the best peer.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

from tests.unit.handler_context import run_batch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks.peers.common import HANDLERS, Served, route  # noqa: E402


def _png() -> bytes:
    import numpy as np
    from PIL import Image

    image = (np.arange(28 * 28) % 256).astype("uint8").reshape(28, 28)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


BODIES = {
    "mlp": lambda run: [json.dumps({"data": [0.01 * i for i in range(100)]}).encode(), b'{"data": [1, 2]}'],
    "sentiment": lambda run: [b'{"text": "a warm, funny and moving film"}', b'{"text": 3}'],
    "fashion": lambda run: [_png(), b"\x89PNG\r\n\x1a\nnot really"],
    "recommender": lambda run: [
        json.dumps({"user_id": json.loads((run / "catalog.json").read_text())["users"][0], "k": 5}).encode(),
        b"{}",
    ],
}


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_peers_answer_as_the_torchship_handler(kind, request, tmp_path_factory):
    from tests.conftest import load_handler

    run = request.getfixturevalue(f"{kind}_run")
    bodies = BODIES[kind](run)  # one good request, one bad: the same status and bytes for both
    module, cls = HANDLERS[kind]
    handler = load_handler(run, module, cls, tmp_path_factory)
    ctx, expected = run_batch(handler, bodies)
    statuses = [ctx.get_response_status(i)[0] or 200 for i in range(len(bodies))]
    served = Served(kind, run)
    assert served.answer(bodies) == [(s, bytes(e)) for s, e in zip(statuses, expected)]
    assert statuses == [200, 400]
    # one request at a time (FastAPI) answers as a batch of them (LitServe, BentoML, Ray Serve)
    assert [served.answer([b])[0] for b in bodies] == served.answer(bodies)


@pytest.mark.skipif(importlib.util.find_spec("fastapi") is None, reason="FastAPI lives in .venv-peers")
def test_fastapi_peer_answers_as_served(mlp_run, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("MODEL_KIND", "mlp")
    monkeypatch.setenv("MODEL_DIR", str(mlp_run))
    sys.modules.pop("benchmarks.fastapi_app", None)
    app = importlib.import_module("benchmarks.fastapi_app").app
    body = BODIES["mlp"](mlp_run)[0]
    answer = TestClient(app).post(route("mlp"), content=body, headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.content) == Served("mlp", mlp_run).answer([body])[0]


def test_peer_commands_name_one_process_per_core_and_uvloop():
    import bench_serving as bench

    python = Path("/p/bin/python")
    for peer in bench.PEERS:
        cmd, env = bench.peer_command(peer, python, 9000, 2)
        assert cmd[0] == str(python) and "9000" in cmd
        assert "2" in cmd or env.get("BENTO_WORKERS") == "2"
    cmd, _ = bench.peer_command("fastapi", python, 9000, 2)
    # asyncio's loop under uvicorn --workers leaves TCP_NODELAY off: ~44 ms a request at c1
    assert cmd[cmd.index("--loop") + 1] == "uvloop"
    with pytest.raises(ValueError):
        bench.peer_command("flask", python, 9000, 2)


def test_cpu_per_request_by_process():
    import bench_serving as bench

    before = {1: ("root", 1.0), 2: ("python", 2.0), 3: ("gone", 5.0)}
    after = {1: ("root", 1.5), 2: ("python", 3.0), 4: ("python", 0.5)}  # 4 started during the test
    cpu = bench.cpu_per_request(before, after, wrk_s=0.25, sent=1000)
    assert cpu["root_us"] == 500 and cpu["children_us"] == 1500 and cpu["server_us"] == 2000
    assert cpu["wrk_us"] == 250 and cpu["by_process"] == {"python": 1500, "root": 500}


def _figures(rps, p50, p99, failed=0):
    return {"throughput_rps": rps, "p50_ms": p50, "p99_ms": p99, "failed": failed, "sent": 1}


def _setup(c1, c16, us):
    return {1: c1, 16: c16, "cpu": {"server_us": us, "wrk_us": 20}}


def test_verdicts_against_the_best_peer():
    import bench_serving as bench

    r = {
        "tuned": _setup(_figures(100, 12.0, 20), _figures(3000, 4, 9), 600),
        "tuned_settings": {"workers": 2, "batch_size": 8, "max_batch_delay": 10},
        "peers": {
            "fastapi": _setup(_figures(2000, 0.4, 1), _figures(2500, 5, 10), 380),
            "ray": _setup(_figures(50, 16, 90), _figures(9000, 80, 400, failed=5), 100),  # failures: not the best
            "bentoml": {"skipped": "did not start"},
        },
    }
    assert bench.best_peer(r["peers"]) == "fastapi" and bench.fastest_peer_c1(r["peers"]) == "fastapi"
    (c16, met16, why16), (c1, met1, why1) = bench.peer_verdicts(r, cores=2)
    assert not met16 and "1.20x" in c16 and "caps it at" in why16
    assert not met1 and "wait for the batch" in why1
    r["tuned"][16]["throughput_rps"], r["tuned"][1]["p50_ms"] = 4000, 0.5
    assert [met for _, met, _ in bench.peer_verdicts(r, cores=2)] == [True, True]
    assert bench.peer_verdicts({**r, "peers": {}}, cores=2)[0][1] is None
