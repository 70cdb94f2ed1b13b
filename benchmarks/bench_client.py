"""The Python client's own overhead at concurrency 1, side by side in one run.

    .venv/bin/python benchmarks/bench_client.py [--seconds 5] [--rounds 3] [--profile 2000]
        [--baseline OLD_CLIENT.py]   # e.g. git show HEAD~1:torchship/sdk/client.py > /tmp/old_client.py

Starts a real TorchServe (token auth on, free ports, its own working folder), packages the mlp
example and registers it with batch_size=1 (no batch delay: the server side is as fast as it
gets, so the client's share shows), then, one connection at a time, POSTs the same bytes to the
same model with:

1. wrk (a C load generator in its own process: `apt-get install wrk`),
2. a bare `http.client` keep-alive loop (the least Python can do),
3. `requests.Session.post` directly (what the client is built on),
4. `TorchServe.predict` with a JSON body (decoded answer), and
5. `TorchServe.predict` with a numpy array (sent as .npy bytes).

In each round wrk runs first, then the Python methods take turns call by call (the order rotated
every turn), so a noisy neighbour hurts them alike; each round prints p50/p99 per call and the
ratios against wrk and bare http.client, and the last table is the median over the rounds. Then
the client CPU time per call of each Python method (less noisy than latency on a shared machine),
a cProfile of `predict` (where the client's time goes), and how many files `predict` opens or
stats per call (none). `--baseline FILE` adds `predict` of another version of
torchship/sdk/client.py (before/after in one run). `--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import builtins
import cProfile
import http.client
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from torchship import LocalServer, TorchServe, archiver  # noqa: E402
from torchship.ops.server import free_port_overrides  # noqa: E402
from torchship.perf import wrk as wrk_engine  # noqa: E402

ROW = [round(0.01 * i, 2) for i in range(100)]  # one mlp input: 100 floats


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))],
    }


def interleaved(methods: dict[str, Callable[[], Any]], seconds: float, warmup: int = 50) -> dict[str, dict[str, float]]:
    """Call every method in turn, the order rotated each turn, for `seconds` per method."""
    names = list(methods)
    for name in names:
        for _ in range(warmup):
            methods[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    end = clock() + seconds * len(names)
    turn = 0
    while clock() < end:
        k = turn % len(names)
        for name in names[k:] + names[:k]:
            call = methods[name]
            t0 = clock()
            call()
            samples[name].append(clock() - t0)
        turn += 1
    return {name: percentiles(samples[name]) for name in names}


def load_baseline(path: Path) -> type:
    """TorchServe from another version of torchship/sdk/client.py (it imports today's torchship)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("torchship.sdk._baseline_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TorchServe  # type: ignore[no-any-return]


def bare_http(url: str, body: bytes, headers: dict[str, str]) -> Callable[[], bytes]:
    """One keep-alive http.client connection; the body sent with the headers (one send)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    path = parts.path

    def call() -> bytes:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"http.client: {resp.status} {data[:200]!r}")
        return data

    return call


def session_post(url: str, body: bytes, headers: dict[str, str]) -> Callable[[], bytes]:
    session = requests.Session()

    def call() -> bytes:
        resp = session.post(url, data=body, headers=headers, timeout=30)
        if resp.status_code != 200:
            raise RuntimeError(f"requests: {resp.status_code} {resp.text[:200]}")
        return resp.content

    return call


def file_touches(client: TorchServe, calls: int, predict: Callable[[], Any]) -> dict[str, float]:
    """Files opened and stat'ed per predict call (the key file, log marks, ...)."""
    counts = {"open": 0, "stat": 0}
    real_open, real_stat = builtins.open, os.stat

    def counting_open(*a: Any, **k: Any) -> Any:
        counts["open"] += 1
        return real_open(*a, **k)

    def counting_stat(*a: Any, **k: Any) -> Any:
        counts["stat"] += 1
        return real_stat(*a, **k)

    predict()  # the first call may read the key file once
    with mock.patch.object(builtins, "open", counting_open), mock.patch.object(os, "stat", counting_stat):
        for _ in range(calls):
            predict()
    return {k: v / calls for k, v in counts.items()}


def profile(predict: Callable[[], Any], calls: int, top: int) -> tuple[str, float]:
    prof = cProfile.Profile()
    t0 = time.process_time()
    prof.enable()
    for _ in range(calls):
        predict()
    prof.disable()
    cpu_ms = (time.process_time() - t0) * 1000 / calls
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue(), cpu_ms


def cpu_per_call(predict: Callable[[], Any], calls: int) -> float:
    """Client CPU (user+sys of this process) per call, in ms, without a profiler."""
    t0 = time.process_time()
    for _ in range(calls):
        predict()
    return (time.process_time() - t0) * 1000 / calls


def setup(workdir: Path, checkpoint: Path | None) -> tuple[LocalServer, TorchServe]:
    store = workdir / "model_store"
    store.mkdir()
    if checkpoint is None:
        from torchship.train import mlp

        print("training the mlp (quick) ...", flush=True)
        checkpoint = mlp.train(workdir / "checkpoints", quick=True, progress=False).run_dir
    archive = archiver.package(archiver.example_spec("mlp", checkpoint, "1.0"), store, workdir / "keys").path
    server = LocalServer(
        ROOT / "config.properties", workdir / "server", model_store=store, overrides=free_port_overrides()
    )
    print("starting TorchServe ...", flush=True)
    server.start(timeout=180)
    client = server.client()
    client.register(archive.name, model_name="mlp", initial_workers=1, batch_size=1, max_batch_delay=1)
    client.wait_until_ready("mlp")
    return server, client


def table(rows: dict[str, dict[str, float]], wrk_p50: float, bare_p50: float) -> str:
    """One round's rows, with their ratios to wrk and to bare http.client, as `summary` prints them."""
    return summary(
        {
            name: {
                **r,
                "x_wrk": r["p50_ms"] / wrk_p50,
                "x_http_client": r["p50_ms"] / bare_p50,
                "plus_ms_http_client": r["p50_ms"] - bare_p50,
            }
            for name, r in rows.items()
        }
    )


def summary(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        f"{'method':<28}{'p50 ms':>9}{'p99 ms':>9}{'x wrk':>8}{'x http.client':>15}{'+ms vs http.client':>20}",
    ]
    for name, r in rows.items():
        lines.append(
            f"{name:<28}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['x_wrk']:>8.2f}"
            f"{r['x_http_client']:>15.2f}{r['plus_ms_http_client']:>+20.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per method per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each measures every method once")
    ap.add_argument("--profile", type=int, default=2000, help="predict calls under cProfile (0: none)")
    ap.add_argument("--top", type=int, default=25, help="cProfile entries shown")
    ap.add_argument("--checkpoint", type=Path, help="an mlp training run folder (default: train one, quick)")
    ap.add_argument("--baseline", type=Path, help="another client.py whose predict is measured alongside")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    if not wrk_engine.available():
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        server, client = setup(Path(tmp), args.checkpoint)
        try:
            report = measure(client, args)
        finally:
            client.close()
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def measure(client: TorchServe, args: argparse.Namespace) -> dict[str, Any]:
    url = client.prediction_url("mlp")
    payload = {"data": ROW}
    array = np.asarray(ROW, dtype=np.float32)
    body, hdrs = client.encode_body(payload)
    npy_body, npy_hdrs = client.encode_body(array)
    key = client.keys.key("inference")
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    headers = {**hdrs, **auth}
    # the answers must match, or the comparison is not like for like
    bare = bare_http(url, body, headers)
    expected = json.loads(bare())
    assert client.predict("mlp", payload) == expected, "predict and http.client disagree"
    assert client.predict("mlp", array) == expected, "the .npy body answers differently"

    methods: dict[str, Callable[[], Any]] = {
        "bare http.client": bare,
        "requests.Session.post": session_post(url, body, headers),
        "TorchServe.predict (JSON)": lambda: client.predict("mlp", payload),
        "TorchServe.predict (npy)": lambda: client.predict("mlp", array),
    }
    if args.baseline:
        old = load_baseline(args.baseline)(
            client.urls["management"], client.urls["inference"], client.urls["metrics"], keys=client.keys
        )
        assert old.predict("mlp", payload) == expected
        methods["baseline predict (JSON)"] = lambda: old.predict("mlp", payload)
    print(f"\nbody: {len(body)} bytes JSON, {len(npy_body)} bytes npy; {args.seconds:g} s per method per round\n")
    rounds: list[dict[str, dict[str, float]]] = []
    for i in range(args.rounds):
        rows: dict[str, dict[str, float]] = {}
        w = wrk_engine.run(
            url, body, seconds=args.seconds, concurrency=1, headers=auth, content_type=hdrs["Content-Type"]
        )
        if w["failed"]:
            raise SystemExit(f"wrk: {w['failed']} failed requests")
        rows["wrk"] = {"n": w["sent"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"]}
        rows.update(interleaved(methods, args.seconds))
        rounds.append(rows)
        print(f"round {i + 1}/{args.rounds}")
        print(table(rows, rows["wrk"]["p50_ms"], rows["bare http.client"]["p50_ms"]) + "\n", flush=True)

    median = {
        name: {
            "p50_ms": statistics.median(r[name]["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r[name]["p99_ms"] for r in rounds),
            # per-round comparisons first, then their median: a noisy round moves every row alike
            "x_wrk": statistics.median(r[name]["p50_ms"] / r["wrk"]["p50_ms"] for r in rounds),
            "x_http_client": statistics.median(r[name]["p50_ms"] / r["bare http.client"]["p50_ms"] for r in rounds),
            "plus_ms_http_client": statistics.median(
                r[name]["p50_ms"] - r["bare http.client"]["p50_ms"] for r in rounds
            ),
        }
        for name in rounds[0]
    }
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds (p50, p99, and each round's comparisons)")
        print(summary(median) + "\n")

    cpu_runs: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(3):
        for name, call in methods.items():
            cpu_runs[name].append(cpu_per_call(call, 1000))
    cpu = {name: min(runs) for name, runs in cpu_runs.items()}
    print("client CPU per call (user+sys of this process, no profiler; best of 3 x 1000 calls):")
    for name, ms in cpu.items():
        print(f"  {name:<28}{ms:7.3f} ms{ms - cpu['bare http.client']:+9.3f} ms vs http.client")
    touches = file_touches(client, 200, methods["TorchServe.predict (JSON)"])
    print(f"files per predict call: {touches['open']:.2f} opened, {touches['stat']:.2f} stat'ed\n")

    prof_text = ""
    if args.profile:
        prof_text, prof_cpu = profile(methods["TorchServe.predict (JSON)"], args.profile, args.top)
        print(
            f"cProfile of TorchServe.predict (JSON), {args.profile} calls "
            f"({prof_cpu:.3f} ms CPU per call under the profiler):"
        )
        print(prof_text)
    return {
        "seconds": args.seconds,
        "rounds": rounds,
        "median": median,
        "cpu_ms_per_call": cpu,
        "files_per_call": touches,
        "profile": prof_text,
    }


if __name__ == "__main__":
    main()
