"""Serving performance, side by side in one run: the same models served five ways.

    .venv/bin/python benchmarks/bench_serving.py [--seconds 8] [--models mlp,sentiment,fashion,recommender]

For each model, at concurrency 1 and 16 (HTTP load from wrk, a C load generator in its own
process: `apt-get install wrk`; the Python client is too slow to saturate a server for tiny models):

1. in-process: the handler's forward pass and answer on parsed inputs, no HTTP, at batch 1 and at
   the tuned batch size, with one torch thread and with all the cores (the better of the two);
2. stock TorchServe: its default config and logging, batch 1, one worker, and the BaseHandler
   a user writes first (benchmarks/stock/), JSON in and out;
3. torchship as `make demo` deploys it: its config (quiet logging), handler, batch 8 / 10 ms,
   binary payloads where they help (fashion: PNG bytes);
4. torchship after `torchship tune` (torchship/perf/tune.py, its guided search over batch size, delay,
   workers and threads, wrk driving each trial at concurrency 16) for a p99 budget of stock's p99;
5. FastAPI/uvicorn: one process serving the same handler code.

Then the ratios against the targets, where the CPU time of a request goes in the tuned setup (the
Java frontend, the Python workers, the model's own share, wrk), and the median time from register
to first prediction for every example model. Results: benchmarks/results/serving.json and
serving.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "handlers"))

import psutil  # noqa: E402
import requests  # noqa: E402

from torchship import LocalServer, archiver  # noqa: E402
from torchship.handlers import HANDLER_DIR  # noqa: E402
from torchship.ops.server import free_port_overrides, free_ports  # noqa: E402
from torchship.perf import wrk as wrk_engine  # noqa: E402
from torchship.perf.tune import threads_copy, tune  # noqa: E402
from torchship.perf.tune import unregister_after_load as unregister  # noqa: E402
from torchship.train import trainers  # noqa: E402
from torchship.train.common import latest_run  # noqa: E402

STOCK = {
    "mlp": "stock_mlp_handler.py",
    "fashion": "stock_fashion_handler.py",
    "sentiment": "stock_sentiment_handler.py",
    "recommender": "stock_recommender_handler.py",
}
STOCK_EXTRA = {"sentiment": ("vocab.json",), "recommender": ("catalog.json",)}


def wrk(url: str, key: str | None, body: bytes, seconds: float, concurrency: int, ctype: str) -> dict:
    return wrk_engine.run(
        url,
        body,
        seconds=seconds,
        concurrency=concurrency,
        content_type=ctype,
        headers={"Authorization": f"Bearer {key}"} if key else None,
    )


def bodies(model: str) -> tuple[bytes, bytes, str]:
    """(stock JSON body, torchship body, torchship content type) for a real held-out input."""
    if model == "mlp":
        from torchship.train.mlp import make_data

        x, _ = make_data(0, 10000)
        body = json.dumps({"data": [round(v, 6) for v in x[-1].tolist()]}).encode()
        return body, body, "application/json"
    if model in ("sentiment", "recommender"):
        body = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "demo_request.py"), model], capture_output=True, check=True
        ).stdout.strip()
        return body, body, "application/json"
    import io

    from PIL import Image

    from torchship.train.data import load_fashion

    _, _, images, _ = load_fashion()
    png = io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    return json.dumps({"image": images[0].tolist()}).encode(), png.getvalue(), "image/png"


MULTI = 16  # items per request in the client-batched run


def multi_body(model: str) -> tuple[bytes, str] | None:
    """One body of MULTI real held-out inputs (and its content type), for the models that take
    several items in one request: mlp and fashion as one .npy array, sentiment as {"texts": [...]}."""
    import io

    import numpy as np

    if model == "mlp":
        from torchship.train.mlp import make_data

        x = make_data(0, 10000)[0][-MULTI:].numpy().astype(np.float32)
    elif model == "fashion":
        from torchship.train.data import load_fashion

        x = load_fashion()[2][:MULTI]
    elif model == "sentiment":
        from torchship.train.sentiment import corpus

        _, texts, _, _, held_out = corpus()
        return json.dumps({"texts": [texts[i] for i in held_out[:MULTI]]}).encode(), "application/json"
    else:
        return None
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue(), "application/x-npy"


def in_process(run: Path, model: str, body: bytes, batch: int, threads: int, seconds: float = 3.0) -> float:
    """Items per second through the handler's forward pass and answer (inputs parsed beforehand)."""
    import importlib

    import torch
    from ts.context import Context

    module, cls = {
        "mlp": ("mlp_handler", "MLPHandler"),
        "fashion": ("fashion_handler", "FashionHandler"),
        "sentiment": ("sentiment_handler", "SentimentHandler"),
        "recommender": ("recommender_handler", "RecommenderHandler"),
    }[model]
    handler = getattr(importlib.import_module(module), cls)()
    with tempfile.TemporaryDirectory() as folder:  # the handler reads its files while initialising only
        for name in ("model.safetensors", "meta.json", *archiver.EXAMPLES[model].run_files):
            shutil.copy(run / name, Path(folder) / name)
        handler.initialize(Context(model, folder, {"model": {"serializedFile": "model.safetensors"}}, batch, None, ""))
    torch.set_num_threads(threads)  # after initialize, which sets the archive's threads
    items = [handler.parse(handler.payload({"body": body}, {})[0]) for _ in range(batch)]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with torch.inference_mode():
            handler.predict(items)
        done += batch
    return done / (time.perf_counter() - start)


def model_limit(run: Path, model: str, body: bytes, batch: int) -> dict:
    """The model's own limit on this machine at one batch size: one torch thread, and all the cores."""
    cores = len(os.sched_getaffinity(0))
    rates = {t: in_process(run, model, body, batch, t) for t in sorted({1, cores})}
    return {
        "items_per_s": max(rates.values()),
        "threads": max(rates, key=rates.get),
        "one_thread_items_per_s": rates[1],
    }


class CpuMeter:
    """CPU seconds of a TorchServe's frontend (Java), its workers (Python) and wrk (this script's
    child) over a load test, per request sent."""

    def __init__(self, server: LocalServer) -> None:
        self.frontend = psutil.Process(server.pid())

    def _now(self) -> tuple[float, float, float]:
        def cpu(proc: psutil.Process) -> float:
            try:
                t = proc.cpu_times()
                return t.user + t.system
            except psutil.NoSuchProcess:
                return 0.0

        import resource

        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            cpu(self.frontend),
            sum(cpu(w) for w in self.frontend.children(recursive=True)),
            kids.ru_utime + kids.ru_stime,
        )

    def measure(self, load) -> tuple[dict, dict]:
        before = self._now()
        figures = load()
        after = self._now()
        sent = max(1, figures["sent"])
        names = ("frontend_us", "workers_us", "wrk_us")
        return figures, {n: round((a - b) / sent * 1e6, 1) for n, a, b in zip(names, after, before)}


def register_and_measure(
    client,
    verify: tuple[Path, Path],
    url_base: str,
    key: str | None,
    archive: str,
    name: str,
    settings,
    body: bytes,
    ctype: str,
    seconds: float,
    concurrencies=(1, 16),
    meter: CpuMeter | None = None,
    multi: tuple[bytes, str] | None = None,
):
    """wrk's figures at each concurrency (with a meter, CPU per request at the highest; with a
    multi body, also that body's figures at the highest concurrency, under the key "multi").
    `verify`: (store, public key): the archive passes verification before it is registered."""
    workers, batch, delay = settings
    archiver.ensure_verified(verify[0] / archive, public_key=verify[1])  # nothing unverified is served
    client.register(archive, model_name=name, initial_workers=workers, batch_size=batch, max_batch_delay=delay)
    try:
        url = f"{url_base}/predictions/{name}"
        wrk(url, key, body, 5, 16, ctype)  # warm-up
        figures = {c: wrk(url, key, body, seconds, c, ctype) for c in concurrencies[:-1]}
        top = concurrencies[-1]
        if meter is None:
            figures[top] = wrk(url, key, body, seconds, top, ctype)
            return figures
        figures[top], cpu = meter.measure(lambda: wrk(url, key, body, seconds, top, ctype))
        if multi is not None:
            figures["multi"] = wrk(url, key, multi[0], seconds, top, multi[1])
        return figures, cpu
    finally:
        unregister(client, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--models", default="mlp,sentiment,fashion,recommender")
    parser.add_argument(
        "--report",
        action="store_true",
        help="Print the tables and redraw the plot of the last run (results/serving.json); measure nothing.",
    )
    args = parser.parse_args()
    if args.report:

        def int_keys(d):
            return {int(k) if k.isdigit() else k: int_keys(v) if isinstance(v, dict) else v for k, v in d.items()}

        last = ROOT / "benchmarks" / "results" / "serving.json"
        if not last.is_file():
            print(f"error: no earlier run here ({last} is missing): run without --report first", file=sys.stderr)
            return 1
        report(int_keys(json.loads(last.read_text())))
        return 0
    if not wrk_engine.available():
        print("error: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    models = [m for m in args.models.split(",") if m]
    # stopped with SIGTERM (timeout, kill): still stop both servers and FastAPI, in the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="serving-"))
    store, keys = work / "store", work / "keys"
    runs = {}
    public_key = archiver.ensure_keys(keys)[1]
    for m in ["mlp", "fashion", "sentiment", "recommender"]:
        runs[m] = (
            latest_run(ROOT / "checkpoints", m)
            or trainers()[m](work / "checkpoints", quick=True, progress=False).run_dir
        )
        archiver.package(archiver.example_spec(m, runs[m], "1.0"), store, keys, progress=lambda *a: None)
    for m in models:
        extra = (
            HANDLER_DIR / "torchship_models.py",
            HANDLER_DIR / "torchship_text.py",
            runs[m] / "meta.json",
            *(runs[m] / f for f in STOCK_EXTRA.get(m, ())),
        )
        # signed like ours: every archive either server is given passes verification first
        archiver.package(
            archiver.ArchiveSpec(
                f"stock-{m}",
                "1.0",
                ROOT / "benchmarks" / "stock" / STOCK[m],
                runs[m] / "model.safetensors",
                extra_files=extra,
            ),
            store,
            keys,
            progress=lambda *a: None,
        )

    # a stock TorchServe: nothing but addresses and the store; TorchServe's own logging
    stock_dir = work / "stock-config"
    stock_dir.mkdir()
    # (the model API must be on to register; everything else stays at its default)
    (stock_dir / "config.properties").write_text("model_store=store\nenable_model_api=true\n")
    stock = LocalServer(
        stock_dir / "config.properties", work / "stock-server", model_store=store, overrides=free_port_overrides()
    )
    ours = LocalServer(
        ROOT / "config.properties", work / "torchship-server", model_store=store, overrides=free_port_overrides()
    )
    results: dict = {"seconds": args.seconds, "models": {}}
    fastapi = None
    try:
        stock.start(timeout=120)
        ours.start(timeout=120)
        sc, oc = stock.client(), ours.client()
        skey, okey = sc.keys.key("inference"), oc.keys.key("inference")
        for m in models:
            print(f"{m}: measuring ...", file=sys.stderr)
            stock_body, body, ctype = bodies(m)
            r = results["models"][m] = {}
            verify = (store, public_key)
            r["stock"] = register_and_measure(
                sc,
                verify,
                stock.config().inference_url,
                skey,
                f"stock-{m}-1.0.mar",
                m,
                (1, 1, 100),
                stock_body,
                "application/json",
                args.seconds,
            )
            serving = archiver.EXAMPLES[m].serving
            r["torchship"] = register_and_measure(
                oc,
                verify,
                ours.config().inference_url,
                okey,
                f"{m}-1.0.mar",
                m,
                (1, serving["batch_size"], serving["max_batch_delay"]),
                body,
                ctype,
                args.seconds,
            )
            budget = r["stock"][16]["p99_ms"]
            print(f"{m}: torchship tune --slo-p99-ms {budget} (stock's p99) ...", file=sys.stderr)
            payload = json.loads(body) if ctype == "application/json" else body
            trials, best = tune(
                oc,
                store,
                m,
                "1.0",
                [payload],
                slo_p99_ms=budget,
                concurrency=16,
                seconds=max(3, args.seconds / 2),
                warmup=1,
                engine="wrk",
                public_key=public_key,
                key_dir=keys,
                log=lambda line, m=m: print(f"  {m}: {line}", file=sys.stderr),
            )
            r["tune_trials"] = [t.to_dict() for t in trials]
            r["tuned_settings"] = {
                "workers": best.workers,
                "threads": best.threads,
                "batch_size": best.batch_size,
                "max_batch_delay": best.max_batch_delay,
            }
            archive = f"{m}-1.0.mar"
            if best.threads != 1:
                archive = threads_copy(
                    store / archive, best.threads, store, keys, name=m, version=f"1.0-threads{best.threads}"
                ).name
            r["tuned"], r["cpu_us_per_request"] = register_and_measure(
                oc,
                verify,
                ours.config().inference_url,
                okey,
                archive,
                m,
                (best.workers, best.batch_size, best.max_batch_delay),
                body,
                ctype,
                args.seconds,
                meter=CpuMeter(ours),
                multi=multi_body(m),
            )
            r["in_process"] = {1: model_limit(runs[m], m, body, 1), 16: model_limit(runs[m], m, body, best.batch_size)}
            if "multi" in r["tuned"]:  # the same items per forward pass as the client-batched run
                r["in_process"]["multi"] = model_limit(runs[m], m, body, best.batch_size * MULTI)
            [port] = free_ports(1)
            env = {**os.environ, "MODEL_DIR": str(runs[m]), "MODEL_KIND": m, "OMP_NUM_THREADS": "1"}
            fastapi = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "benchmarks.fastapi_app:app",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"http://127.0.0.1:{port}/predictions/{m}"
            for _ in range(100):
                try:
                    if requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.2)
            wrk(url, None, body, 5, 16, ctype)
            r["fastapi"] = {c: wrk(url, None, body, args.seconds, c, ctype) for c in (1, 16)}
            fastapi.terminate()
            fastapi.wait(10)
            fastapi = None

        print("deploy to first prediction ...", file=sys.stderr)
        deploy = {}
        for m in ["mlp", "sentiment", "fashion", "recommender"]:
            from tests.strategies import GOOD

            times = []
            for _ in range(3):
                start = time.perf_counter()
                oc.register(f"{m}-1.0.mar", model_name=m, initial_workers=1)
                oc.predict(m, json.loads(GOOD[m]))
                times.append(time.perf_counter() - start)
                unregister(oc, m)
            deploy[m] = statistics.median(times)
        results["deploy_to_first_prediction_s"] = deploy
    finally:
        if fastapi is not None:
            fastapi.terminate()
        stock.stop()
        ours.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    return 0


def report(results: dict) -> None:
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(results, indent=1, default=str))
    names = [
        ("in_process", "(1) in-process forward"),
        ("stock", "(2) stock TorchServe"),
        ("torchship", "(3) torchship (make demo)"),
        ("tuned", "(4) torchship tuned"),
        ("fastapi", "(5) FastAPI/uvicorn"),
    ]
    for m, r in results["models"].items():
        tuned = r["tuned_settings"]
        print(f"\n{m}  (throughput req/s and p99 ms; in-process: items/s at batch 1 and {tuned['batch_size']})")
        print(f"{'configuration':30} {'c=1 req/s':>10} {'c=1 p99':>8} {'c=16 req/s':>11} {'c=16 p99':>9}")
        for key, label in names:
            row = r[key]
            if key == "in_process":
                print(f"{label:30} {row[1]['items_per_s']:10.0f} {'':>8} {row[16]['items_per_s']:11.0f}")
                continue
            print(
                f"{label:30} {row[1]['throughput_rps']:10.0f} {row[1]['p99_ms']:8.1f} {row[16]['throughput_rps']:11.0f}"
                f" {row[16]['p99_ms']:9.1f}"
            )
        print(
            f"tuned by `torchship tune` ({len(r['tune_trials'])} trials): workers {tuned['workers']}, threads "
            f"{tuned['threads']}, batch {tuned['batch_size']}, delay {tuned['max_batch_delay']} ms"
        )
    print("\nratios (concurrency 16) against the targets")
    for m, r in results["models"].items():
        t, s, f, raw = r["tuned"][16], r["stock"][16], r["fastapi"][16], r["in_process"][16]["items_per_s"]
        want = {"mlp": 3.0, "fashion": 2.0}.get(m)  # (4)/(2) targets; other models: reported only
        checks = [
            (
                f"(4)/(2) throughput (p99 {t['p99_ms']:.1f} vs {s['p99_ms']:.1f} ms)",
                t["throughput_rps"] / s["throughput_rps"],
                want,
                t["p99_ms"] <= s["p99_ms"],
            ),
            (
                f"(4)/(5) throughput (p99 {t['p99_ms']:.1f} vs {f['p99_ms']:.1f} ms)",
                t["throughput_rps"] / f["throughput_rps"],
                2.0,
                t["p99_ms"] <= f["p99_ms"],
            ),
            ("(4)/(1) throughput", t["throughput_rps"] / raw, 0.7 if m in ("fashion", "sentiment") else None, True),
        ]
        for label, ratio, target, p99_ok in checks:
            verdict = "" if target is None else ("MET" if ratio >= target and p99_ok else "NOT MET")
            print(f"  {m:8} {label:52} {ratio:6.2f}x  target {'-' if target is None else f'>= {target}x'} {verdict}")
    print(
        f"\nclient-side batching: the tuned server, {MULTI} items per request, concurrency 16; (1) at the same "
        f"items per forward pass"
    )
    for m, r in results["models"].items():
        if "multi" in r["tuned"]:
            multi, raw = r["tuned"]["multi"], r["in_process"]["multi"]["items_per_s"]
            items = multi["throughput_rps"] * MULTI
            target = 0.7 if m in ("fashion", "sentiment") else None
            verdict = "" if target is None else f"  target >= {target}x {'MET' if items / raw >= target else 'NOT MET'}"
            print(
                f"  {m:10} {items:8.0f} items/s (p99 {multi['p99_ms']:.1f} ms, {multi['failed']} failed) vs (1) "
                f"{raw:8.0f}: {items / raw:.2f}x{verdict}; {items / r['tuned'][16]['throughput_rps']:.1f}x the "
                f"items of one-item requests"
            )
    print("\nwhere a request's CPU time goes, tuned, concurrency 16 (microseconds of CPU per request)")
    print(
        f"{'model':12} {'frontend (Java)':>16} {'workers (Python)':>17} {'model alone':>12} {'wrk':>6} {'total':>7}"
        f" {'ceiling req/s':>14}"
    )
    cores = len(os.sched_getaffinity(0))
    for m, r in results["models"].items():
        cpu = r["cpu_us_per_request"]
        alone = 1e6 / r["in_process"][16]["one_thread_items_per_s"]  # one item's forward, one thread
        total = cpu["frontend_us"] + cpu["workers_us"] + cpu["wrk_us"]
        print(
            f"{m:12} {cpu['frontend_us']:16.0f} {cpu['workers_us']:17.0f} {alone:12.0f} {cpu['wrk_us']:6.0f} "
            f"{total:7.0f} {cores * 1e6 / total:14.0f}"
        )
    print(f"(ceiling: {cores} cores / total CPU per request; 'model alone' is part of the workers' time)")
    print("\ndeploy to first prediction, median of 3 (target <= 3 s):")
    for m, s in results["deploy_to_first_prediction_s"].items():
        print(f"  {m:12} {s:5.2f} s  {'MET' if s <= 3 else 'NOT MET'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(results["models"]), figsize=(5.5 * len(results["models"]), 4), squeeze=False)
        from matplotlib.ticker import NullFormatter

        for ax, (m, r) in zip(axes[0], results["models"].items()):
            bars = [
                (
                    label.split(") ")[1],
                    r["in_process"][16]["items_per_s"] if key == "in_process" else r[key][16]["throughput_rps"],
                    "#4c72b0",
                )
                for key, label in names
            ]
            if "multi" in r["tuned"]:
                bars.append((f"tuned, {MULTI} items/request", r["tuned"]["multi"]["throughput_rps"] * MULTI, "#dd8452"))
            for y, (_label, value, color) in enumerate(bars[::-1]):
                ax.barh(y, value, color=color)
                ax.text(value, y, f" {value:,.0f}", va="center")
            ax.set_yticks(range(len(bars)), [b[0] for b in bars[::-1]])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{m}: throughput at concurrency 16")
            ax.set_xlabel("requests (orange: items) per second, log scale")
        fig.tight_layout()
        fig.savefig(out / "serving.png", dpi=90)
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
