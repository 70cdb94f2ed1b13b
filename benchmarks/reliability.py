"""Reliability report: bad input mixed into the same batches as good input (all six example
models), a worker killed under load, and a server crash, against a real local TorchServe, with the
figures side by side.

    .venv/bin/python benchmarks/reliability.py [--bad 500] [--seconds 6]

Uses the newest checkpoint of each example model (training a quick one when there is none),
packs them into a temporary store with temporary keys, and starts its own server on free ports.

Bad input: each model (its verified archive) is registered once more as mixed-<name>, one worker,
batches of 8 gathered for up to a second; every round sends 6 bad and 2 good requests at once, so
they share a batch (the handlers' X-Batch-Size header counts the rounds that did). The bad ones
are the named attacks of tests/integration/test_fuzz.py (deep JSON, huge v2 shapes, a lying .npy
header, a PNG bomb, a gzip bomb, oversize bodies, a tiny temperature, a huge user_id ...) and
--bad hypothesis-drawn malformed bodies; a good one is hurt when its answer is not 200 or differs
from the in-process answer of the same handler code.
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

from tests.strategies import GOOD  # noqa: E402
from torchship import LocalServer, archiver  # noqa: E402
from torchship.ops.desired import apply, parse_desired  # noqa: E402
from torchship.ops.server import free_port_overrides  # noqa: E402
from torchship.perf.load import run_load  # noqa: E402
from torchship.train import trainers  # noqa: E402
from torchship.train.common import latest_run  # noqa: E402

MODELS = ["mlp", "sentiment", "fashion", "recommender"]  # the desired state of sections 2 and 3
ALL_MODELS = ["mlp", "sentiment", "fashion", "recommender", "embedder", "textgen"]


def draw(model: str, n: int) -> list[bytes]:
    from tests.strategies import malformed

    bodies: list[bytes] = []

    @settings(max_examples=n, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(malformed(model))
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    return bodies[:n]


class _Temp:
    """What tests.conftest.load_handler needs of pytest's tmp_path_factory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name, dir=self.root))


def mixed_batches(server, client, store: Path, public_key: Path, runs: dict, bad_n: int, work: Path) -> list[list]:
    """Section 1: per model, bad items and good items in the same batches; a row per model."""
    from tests.conftest import load_handler
    from tests.integration.test_fuzz import BATCH, GOODS, HANDLERS, JSON, V2_HEADER, attacks, rounds_of, same_answer
    from tests.unit.handler_context import make_context, run_stream

    url = server.config().inference_url
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=BATCH))
    rows = []
    for m in ALL_MODELS:
        archive = store / f"{m}-1.0.mar"
        check = archiver.verify_archive(archive, public_key=public_key)
        assert check.ok, check
        client.register(
            archive.name, model_name=f"mixed-{m}", initial_workers=1, batch_size=BATCH, max_batch_delay=1000
        )
        try:
            handler = load_handler(runs[m], *HANDLERS[m], _Temp(work))
            expected = []
            for body, _ in GOODS[m]:
                if m == "textgen":
                    expected.append(run_stream(handler, [body])[1][0])
                else:
                    ctx = make_context(handler.model_dir)
                    expected.append(json.loads(handler.handle([{"body": body}], ctx)[0]))
            bad = attacks(m) + [(f"drawn {b[:40]!r}", b, JSON) for b in draw(m, bad_n)]
            key = json.loads(server.key_file.read_text())["inference"]["key"]

            def send(item, m=m, key=key):
                body, headers = item
                path = f"/v2/models/mixed-{m}/infer" if V2_HEADER in headers else f"/predictions/mixed-{m}"
                return session.post(
                    url + path, data=body, timeout=120, headers={"Authorization": f"Bearer {key}", **headers}
                )

            statuses: dict[int, int] = {}
            good_sent = good_hurt = five = batched = rounds = 0
            with ThreadPoolExecutor(BATCH) as pool:
                for items, _labels, goods_at in rounds_of(bad, GOODS[m], 0):
                    resps = list(pool.map(send, items))
                    rounds += 1
                    batched += {r.headers.get("X-Batch-Size") for r in resps} == {str(BATCH)}
                    for i, r in enumerate(resps):
                        five += r.status_code >= 500
                        if i in goods_at:
                            good_sent += 1
                            good_hurt += r.status_code != 200 or not same_answer(m, r, expected[goods_at[i]])
                        else:
                            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            rows.append(
                [
                    m,
                    sum(statuses.values()),
                    " ".join(f"{c}x{n}" for c, n in sorted(statuses.items())),
                    good_sent,
                    good_hurt,
                    five,
                    f"{batched}/{rounds}",
                    "yes" if client.is_healthy() else "NO",
                ]
            )
        finally:
            client.unregister(f"mixed-{m}")
    return rows


def table(headers: list[str], rows: list[list]) -> str:
    try:
        from torchship.cli.table import render
    except ImportError:  # before the CLI became a package
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
    for m in ALL_MODELS:
        runs[m] = latest_run(ROOT / "checkpoints", m)
        if runs[m] is None:
            print(f"training {m} (quick) ...", file=sys.stderr)
            runs[m] = trainers()[m](work / "checkpoints", quick=True, progress=False).run_dir
        archiver.package(archiver.example_spec(m, runs[m], "1.0"), store, keys, progress=lambda *a: None)
    public_key = archiver.public_key_path(keys)
    server = LocalServer(
        ROOT / "config.properties", work / "server", model_store=store, overrides=free_port_overrides()
    )
    server.start(timeout=120)
    desired = parse_desired(
        {
            "models": {
                m: {"versions": ["1.0"], "workers": {"min": 2, "max": 2}, "batch_size": 8, "max_batch_delay_ms": 20}
                for m in MODELS
            }
        }
    )
    try:
        client = server.client()
        report = apply(client, store, desired, public_key=public_key)
        assert report.ok, report.error

        # 1. bad input, in the same batches as good requests
        print(
            f"sending the named attacks and {args.bad} malformed requests per model, 6 bad and 2 good in each "
            "batch of 8 ...",
            file=sys.stderr,
        )
        bad_rows = mixed_batches(server, client, store, public_key, runs, args.bad, work)

        # 2. a worker killed under load, with and without the client's safe retry
        print("killing a worker under load ...", file=sys.stderr)
        body = json.loads(GOOD["mlp"])
        box: dict = {}
        with server.client() as safe, server.client(retries=0) as raw:
            threads = [
                threading.Thread(
                    target=lambda k=k, c=c: box.__setitem__(
                        k, run_load(c, "mlp", [body], concurrency=3, duration=args.seconds)
                    )
                )
                for k, c in (("with retry", safe), ("without retry", raw))
            ]
            for t in threads:
                t.start()
            time.sleep(args.seconds / 3)
            os.kill(client.describe("mlp")[0].workers[0].pid, signal.SIGKILL)
            for t in threads:
                t.join()
        kill_rows = [[k, r.sent, r.statuses.get(200, 0), r.failed, round(r.p(99), 1)] for k, r in box.items()]

        # 3. the server killed, restarted, and the declared state applied again
        print("crashing and restarting the server ...", file=sys.stderr)
        before = {
            m: {(d.version, d.is_default, d.min_workers, d.batch_size, d.max_batch_delay) for d in client.versions(m)}
            for m in MODELS
        }
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
            after = {
                (d.version, d.is_default, d.min_workers, d.batch_size, d.max_batch_delay) for d in client.versions(m)
            }
            serves = client.predict(m, json.loads(GOOD[m])) is not None
            restart_rows.append([m, "yes" if after == before[m] else "NO", "yes" if serves else "NO"])
        verified = all(archiver.verify_archive(p, public_key=public_key).ok for p in store.glob("*.mar"))
    finally:
        server.stop()

    print("\n1. Bad input in the same batches as good input (6 bad + 2 good per batch of 8)")
    print(
        table(
            ["model", "bad sent", "bad statuses", "good sent", "good hurt", "5xx", "full batches", "healthy after"],
            bad_rows,
        )
    )
    print("good hurt: not 200, or an answer other than the same handler's in-process answer")
    print(f"\n2. A worker killed (SIGKILL) under load: mlp, 2 workers, {args.seconds:.0f} s at concurrency 3")
    print(table(["client", "sent", "answered", "lost", "p99 ms"], kill_rows))
    print(f"\n3. Server crashed (every process killed), restarted, `apply` run: {seconds:.1f} s to restored")
    print(table(["model", "versions/default/workers/batching restored", "serves"], restart_rows))
    print(f"archives in the store verified after the crash: {'yes' if verified else 'NO'}; apply ok: {restored.ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
