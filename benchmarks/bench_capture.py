"""What sampled capture costs: one model served with capture off and at sample 1.0 in turns, side by side.

    .venv/bin/python benchmarks/bench_capture.py [--model mlp] [--seconds 3] [--rounds 8]

One TorchServe (torchship's config, its own ports and folder), the model registered once with the
demo's settings (one worker, batch 8, 1 ms). Each round loads it with wrk at 16 callers and at 1, once
with capture off and once at sample 1.0 (`--sample F` for another rate), the settings file rewritten
between the two loads as `torchship capture` does it, and which goes first alternating by round: the
same worker process, the same model, the same port, so what differs is capture alone (an earlier
version compared two registrations of the model, and two identical registrations differed by up to
10%). Each load's bytes written to the capture folder are checked (none with capture off). Prints the
medians, the median of each round's ratio (its two loads ran seconds apart), and the CPU time per
request of the model's worker and of the whole server (the Java frontend and the worker: on a
saturated machine, what bounds its throughput); then the handler's own time per request with capture
off and on, the same archive's handler run in this process on batches of 8 of the same request. The
target: at most 5% of the throughput at sample 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import psutil  # noqa: E402
from bench_defaults import packaged, payload  # noqa: E402

from torchship import LocalServer  # noqa: E402
from torchship.archiver.examples import EXAMPLES  # noqa: E402
from torchship.handlers import torchship_capture  # noqa: E402
from torchship.ops import capture  # noqa: E402
from torchship.ops.server import free_port_overrides  # noqa: E402
from torchship.perf import wrk  # noqa: E402
from torchship.perf.curve import load_point  # noqa: E402

OFF = "capture off"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sample", type=float, default=1.0, help="The capture rate to measure (0: both off).")
    parser.add_argument(
        "--drift-every", type=float, default=30, help="How often the workers measure drift (0: never) [30]."
    )
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed: run `make os` (or scripts/setup-os.sh wrk)")
    serving = EXAMPLES[args.model].serving
    on = f"capture at {args.sample:g}"
    rates = {OFF: 0.0, on: args.sample}
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        work = Path(tmp)
        store, archive = packaged(args.model, work)
        server = LocalServer(
            ROOT / "config.properties",
            work / "server",
            model_store=store,
            overrides=free_port_overrides(),
            capture_dir=work / "capture",
        )
        name = args.model
        captured = torchship_capture.folder(work / "capture", name, "1.0")
        server.start(timeout=120)
        try:
            with server.client() as client:
                client.register(
                    archive.name,
                    model_name=name,
                    initial_workers=serving["workers"],
                    batch_size=serving["batch_size"],
                    max_batch_delay=serving["max_batch_delay"],
                )
                client.wait_until_ready(name, timeout=120)
                body = [payload(args.model)]

                def capture_at(label: str) -> None:
                    capture.write_settings(
                        work / "capture", name, "1.0", sample=rates[label], drift_every_s=args.drift_every
                    )
                    time.sleep(torchship_capture.CHECK_EVERY_S + 0.2)  # the worker reads it at its next batch

                for label in rates:  # warm-up, both ways
                    capture_at(label)
                    load_point(client, name, body, concurrency=16, seconds=2, engine="wrk")
                workers = [psutil.Process(w.pid) for w in client.describe(name)[0].workers if w.pid]
                frontend = [psutil.Process(server.pid())]
                figures: dict[tuple[str, int], list] = {(label, c): [] for label in rates for c in (16, 1)}
                cpu_us: dict[tuple[str, int], list[tuple[float, float]]] = {k: [] for k in figures}
                bytes_per_request: dict[str, list[float]] = {label: [] for label in rates}
                for r in range(args.rounds):
                    for c in (16, 1):
                        # which goes first alternates by round: neither always follows the other's load
                        for label in list(rates)[:: 1 if r % 2 == 0 else -1]:
                            capture_at(label)
                            written = file_sizes(captured)
                            worker_s, frontend_s = cpu_s(workers), cpu_s(frontend)
                            p = load_point(client, name, body, concurrency=c, seconds=args.seconds, engine="wrk")
                            served = max(p.throughput * args.seconds, 1)  # wrk's rate: requests over the load's time
                            worker = (cpu_s(workers) - worker_s) / served * 1e6
                            whole = worker + (cpu_s(frontend) - frontend_s) / served * 1e6
                            cpu_us[(label, c)].append((worker, whole))
                            bytes_per_request[label].append(grown(written, file_sizes(captured)) / served)
                            figures[(label, c)].append(p)
                            print(
                                f"round {r + 1}/{args.rounds}  {label:<15} c{c:<3} {p.throughput:8.1f} req/s  "
                                f"p50 {p.p50_ms:6.2f}  p99 {p.p99_ms:7.2f}  worker {worker:5.0f} us/req  "
                                f"server {whole:5.0f} us/req  captured {bytes_per_request[label][-1]:5.0f} B/req"
                                + (f"  {p.failed} failed" if p.failed else ""),
                                flush=True,
                            )
        finally:
            server.stop()
        if any(bytes_per_request[OFF]):
            raise SystemExit("capture wrote records while it was off: the settings did not reach the worker")
        own_off, own_on = in_process(archive, work / "in-process", body[0], args.sample)
    med = {
        k: (
            statistics.median(p.throughput for p in v),
            statistics.median(p.p50_ms for p in v),
            statistics.median(p.p99_ms for p in v),
        )
        for k, v in figures.items()
    }
    paired = {
        c: statistics.median(b.throughput / a.throughput for a, b in zip(figures[(OFF, c)], figures[(on, c)]))
        for c in (16, 1)
    }
    worker_us = {k: statistics.median(w for w, _ in v) for k, v in cpu_us.items()}
    server_us = {k: statistics.median(s for _, s in v) for k, v in cpu_us.items()}
    print(
        f"\n{args.model}: median of {args.rounds} rounds of {args.seconds:g} s, the same registration "
        "(req/s, p50 ms, p99 ms; CPU per request: the worker's, the server's)"
    )
    for c in (16, 1):
        a, b = med[(OFF, c)], med[(on, c)]
        print(
            f"  {c:>2} callers: off {a[0]:8.1f} / {a[1]:.2f} / {a[2]:.2f} / "
            f"{worker_us[(OFF, c)]:.0f} / {server_us[(OFF, c)]:.0f} us   "
            f"{on} {b[0]:8.1f} / {b[1]:.2f} / {b[2]:.2f} / {worker_us[(on, c)]:.0f} / {server_us[(on, c)]:.0f} us   "
            f"throughput {paired[c]:.3f}x (median of the rounds' ratios)"
        )
    print(
        f"  in this process, the handler on batches of 8: {own_off:.1f} us a request with capture off, "
        f"{own_on:.1f} us with it on ({own_on - own_off:+.1f} us); "
        f"{statistics.median(bytes_per_request[on]):.0f} bytes captured a request"
    )
    cost = 1 - paired[16]
    extra = server_us[(on, 16)] - server_us[(OFF, 16)]
    print(
        f"{on} costs {cost:.1%} of the throughput at 16 callers (target <= 5%: "
        f"{'met' if cost <= 0.05 else 'NOT met'}) and {extra:+.0f} us of the server's CPU a request "
        f"({extra / server_us[(OFF, 16)]:+.1%}; the worker's: "
        f"{worker_us[(on, 16)] - worker_us[(OFF, 16)]:+.0f} us)"
    )
    return 0


def in_process(archive: Path, folder: Path, body: object, sample: float, batches: int = 2000) -> tuple[float, float]:
    """The archive's handler in this process, as a worker runs it (its files unpacked into `folder`, initialised
    from a TorchServe context): microseconds of CPU per request on batches of 8 copies of `body`, with capture
    off and at `sample` (medians of 3 alternating runs)."""
    import importlib
    import json
    import zipfile

    from ts.context import Context, RequestProcessor

    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]
    sys.path.insert(0, str(folder))
    module = importlib.import_module(Path(manifest["handler"]).stem)
    handler_class = next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__)
    import torchship_capture

    def context(n: int) -> Context:
        ctx = Context("m", str(folder), {"model": manifest}, n, None, "0.12.0", model_yaml_config={})
        ctx.request_processor = [RequestProcessor({}) for _ in range(n)]
        ctx.request_ids = {i: f"req-{i}" for i in range(n)}
        return ctx

    handlers = {}
    for label, rate in (("off", 0.0), ("on", sample)):
        handler = handler_class()
        handler.initialize(context(1))
        root = folder / f"capture-{label}"
        capture.write_settings(root, "m", "1.0", sample=rate, drift_every_s=0)
        handler.capture = torchship_capture.Capture(root, "m", "1.0")
        handlers[label] = handler
    sent = body if isinstance(body, bytes) else json.dumps(body).encode()  # a PNG as it is, else JSON
    data = [{"body": bytearray(sent)} for _ in range(8)]  # as a worker receives a body
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3):
        for label, handler in handlers.items():
            started = time.process_time()
            for _ in range(batches):
                handler.handle(data, context(8))
            times[label].append((time.process_time() - started) / batches / 8 * 1e6)
    return statistics.median(times["off"]), statistics.median(times["on"])


def cpu_s(processes: list[psutil.Process]) -> float:
    """The CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for proc in processes:
        t = proc.cpu_times()
        total += t.user + t.system
    return total


def file_sizes(folder: Path) -> dict[Path, int]:
    """The capture files in `folder` now, and their sizes."""
    return {p: p.stat().st_size for p in folder.glob("capture-*.jsonl")} if folder.is_dir() else {}


def grown(before: dict[Path, int], after: dict[Path, int]) -> int:
    """The bytes appended between two `file_sizes` (files pruned meanwhile count for nothing)."""
    return sum(size - before.get(path, 0) for path, size in after.items())


if __name__ == "__main__":
    raise SystemExit(main())
