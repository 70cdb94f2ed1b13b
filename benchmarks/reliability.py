"""Reliability report: bad input, a worker killed under load, and a server crash, against a real
local TorchServe, with the figures side by side.

    .venv/bin/python benchmarks/reliability.py [--bad 500] [--seconds 6]

Uses the newest checkpoint of each example model (training a quick one when there is none),
packs them into a temporary store with temporary keys, and starts its own server on free ports.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

import archiver  # noqa: E402
from torchship import LocalServer  # noqa: E402
from torchship.server import free_port_overrides  # noqa: E402
from torchship.desired import apply, parse_desired  # noqa: E402
from torchship.load import run_load  # noqa: E402
from torchship.testing import GOOD, malformed  # noqa: E402
from train import trainers  # noqa: E402
from train.common import latest_run  # noqa: E402

MODELS = ["mlp", "sentiment", "fashion", "recommender"]


def draw(model: str, n: int) -> list[bytes]:
    bodies: list[bytes] = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(malformed(model))
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    return bodies


def table(headers: list[str], rows: list[list]) -> str:
    from torchship.table import render

    return render(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bad", type=int, default=500, help="malformed requests per model")
    parser.add_argument("--seconds", type=float, default=6.0, help="load duration around the worker kill")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    store, keys = work / "store", work / "keys"
    runs = {}
    for m in MODELS:
        runs[m] = latest_run(ROOT / "checkpoints", m)
        if runs[m] is None:
            print(f"training {m} (quick) ...", file=sys.stderr)
            runs[m] = trainers()[m](work / "checkpoints", quick=True, progress=False).run_dir
        archiver.package(archiver.example_spec(m, runs[m], "1.0"), store, keys, progress=lambda *a: None)
    public_key = archiver.public_key_path(keys)
    server = LocalServer(ROOT / "config.properties", work / "server", model_store=store,
                         overrides=free_port_overrides())
    server.start(timeout=120)
    desired = parse_desired({"models": {m: {"versions": ["1.0"], "workers": {"min": 2, "max": 2}, "batch_size": 8,
                                            "max_batch_delay_ms": 20} for m in MODELS}})
    try:
        client = server.client()
        report = apply(client, store, desired, public_key=public_key)
        assert report.ok, report.error

        # 1. bad input, mixed with good requests
        print(f"sending {args.bad} malformed requests per model (with good ones among them) ...", file=sys.stderr)
        url = server.config().inference_url + "/predictions/"
        key = json.loads(server.key_file.read_text())["inference"]["key"]
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=8))
        bad_rows = []
        for m in MODELS:
            bodies = draw(m, args.bad)
            mixed = [(b, False) for b in bodies] + [(GOOD[m], True)] * (len(bodies) // 7)

            def send(item, m=m):
                body, good = item
                r = session.post(url + m, data=body, timeout=60, headers={"Authorization": f"Bearer {key}",
                                                                           "Content-Type": "application/json"})
                return r.status_code, good

            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(send, mixed))
            bad = [code for code, good in results if not good]
            good = [code for code, good in results if good]
            bad_rows.append([m, len(bad), sum(400 <= c < 500 for c in bad), sum(c >= 500 for c in bad),
                             len(good), sum(c == 200 for c in good), "yes" if client.is_healthy() else "NO"])

        # 2. a worker killed under load, with and without the client's safe retry
        print("killing a worker under load ...", file=sys.stderr)
        body = json.loads(GOOD["mlp"])
        box: dict = {}
        with server.client() as safe, server.client(retries=0) as raw:
            threads = [threading.Thread(target=lambda k=k, c=c: box.__setitem__(
                k, run_load(c, "mlp", [body], concurrency=3, duration=args.seconds)))
                for k, c in (("with retry", safe), ("without retry", raw))]
            for t in threads:
                t.start()
            time.sleep(args.seconds / 3)
            os.kill(client.describe("mlp")[0].workers[0].pid, signal.SIGKILL)
            for t in threads:
                t.join()
        kill_rows = [[k, r.sent, r.statuses.get(200, 0), r.failed, round(r.p(99), 1)] for k, r in box.items()]

        # 3. the server killed, restarted, and the declared state applied again
        print("crashing and restarting the server ...", file=sys.stderr)
        before = {m: {(d.version, d.is_default, d.min_workers, d.batch_size, d.max_batch_delay)
                      for d in client.versions(m)} for m in MODELS}
        root = psutil.Process(server.pid())
        procs = [root] + root.children(recursive=True)
        for p in procs:
            p.kill()
        psutil.wait_procs(procs, timeout=10)
        t0 = time.monotonic()
        server.start(timeout=120)
        client = server.client()
        restored = apply(client, store, desired, public_key=public_key)
        seconds = time.monotonic() - t0
        restart_rows = []
        for m in MODELS:
            after = {(d.version, d.is_default, d.min_workers, d.batch_size, d.max_batch_delay)
                     for d in client.versions(m)}
            serves = client.predict(m, json.loads(GOOD[m])) is not None
            restart_rows.append([m, "yes" if after == before[m] else "NO", "yes" if serves else "NO"])
        verified = all(archiver.verify_archive(p, public_key=public_key).ok for p in store.glob("*.mar"))
    finally:
        server.stop()

    print("\n1. Bad input (malformed requests mixed with good ones, batches of up to 8)")
    print(table(["model", "bad sent", "4xx", "5xx", "good sent", "good 200", "healthy after"], bad_rows))
    print(f"\n2. A worker killed (SIGKILL) under load: mlp, 2 workers, {args.seconds:.0f} s at concurrency 3")
    print(table(["client", "sent", "answered", "lost", "p99 ms"], kill_rows))
    print(f"\n3. Server crashed (every process killed), restarted, `apply` run: {seconds:.1f} s to restored")
    print(table(["model", "versions/default/workers/batching restored", "serves"], restart_rows))
    print(f"archives in the store verified after the crash: {'yes' if verified else 'NO'}; apply ok: {restored.ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
