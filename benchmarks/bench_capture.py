"""What sampled capture costs: the same model served with capture off and at sample 1.0, side by side.

    .venv/bin/python benchmarks/bench_capture.py [--model mlp] [--seconds 5] [--rounds 3]

One TorchServe (torchship's config, its own ports and folder), the model registered twice under two
names with the same settings (the demo's: one worker, batch 8, 1 ms); capture turned on for one at
sample 1.0 (every request and answer written), wrk loading each in turn at 16 callers and at 1, the
rounds interleaved so that a noisy stretch slows both, and which of the two goes first alternating
by round (`--sample F` for another rate). Prints the medians, the median of each round's ratio (the two
loads of a round ran seconds apart, so their ratio is steadier than a ratio of medians) and the CPU time
the model's worker spent per request, read from the worker's own process. On a shared machine these
move by up to 10% between two identical registrations (`--sample 0` shows it), so the run ends with
the one figure noise does not move: the handler's own time per request with capture off and on, the
same archive's handler run in this process on batches of 8 of the same request. The target: at most
5% of the throughput at sample 1.0.
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
from torchship.ops import capture  # noqa: E402
from torchship.ops.server import free_port_overrides  # noqa: E402
from torchship.perf import wrk  # noqa: E402
from torchship.perf.curve import load_point  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample", type=float, default=1.0, help="The capture rate to measure.")
    parser.add_argument(
        "--drift-every", type=float, default=30, help="How often the workers measure drift (0: never) [30]."
    )
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed: run `make os` (or scripts/setup-os.sh wrk)")
    serving = EXAMPLES[args.model].serving
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
        server.start(timeout=120)
        try:
            with server.client() as client:
                on = f"capture at {args.sample:g}"
                names = {"capture off": f"off-{args.model}", on: f"on-{args.model}"}
                for name in names.values():
                    client.register(
                        archive.name,
                        model_name=name,
                        initial_workers=serving["workers"],
                        batch_size=serving["batch_size"],
                        max_batch_delay=serving["max_batch_delay"],
                    )
                    client.wait_until_ready(name, timeout=120)
                capture.write_settings(
                    work / "capture", names[on], "1.0", sample=args.sample, drift_every_s=args.drift_every
                )
                body = [payload(args.model)]
                for name in names.values():  # warm-up (and the workers read their settings)
                    load_point(client, name, body, concurrency=16, seconds=2, engine="wrk")
                workers = {
                    label: [psutil.Process(w.pid) for w in client.describe(name)[0].workers if w.pid]
                    for label, name in names.items()
                }
                figures: dict[tuple[str, int], list] = {(label, c): [] for label in names for c in (16, 1)}
                cpu_us: dict[tuple[str, int], list[float]] = {k: [] for k in figures}
                for r in range(args.rounds):
                    for c in (16, 1):
                        # which goes first alternates by round: neither always follows the other's load
                        for label, name in list(names.items())[:: 1 if r % 2 == 0 else -1]:
                            before = worker_cpu_s(workers[label])
                            p = load_point(client, name, body, concurrency=c, seconds=args.seconds, engine="wrk")
                            served = p.throughput * args.seconds  # wrk's rate is its requests over the load's time
                            cpu_us[(label, c)].append((worker_cpu_s(workers[label]) - before) / max(served, 1) * 1e6)
                            figures[(label, c)].append(p)
                            print(
                                f"round {r + 1}/{args.rounds}  {label:<15} c{c:<3} {p.throughput:8.1f} req/s  "
                                f"p50 {p.p50_ms:6.2f}  p99 {p.p99_ms:7.2f}  worker {cpu_us[(label, c)][-1]:5.0f} us/req"
                                + (f"  {p.failed} failed" if p.failed else ""),
                                flush=True,
                            )
                written = capture.records(work / "capture", names[on], "1.0")
        finally:
            server.stop()
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
        c: statistics.median(b.throughput / a.throughput for a, b in zip(figures[("capture off", c)], figures[(on, c)]))
        for c in (16, 1)
    }
    cpu = {k: statistics.median(v) for k, v in cpu_us.items()}
    print(
        f"\n{args.model}: median of {args.rounds} rounds of {args.seconds:g} s "
        "(req/s, p50 ms, p99 ms; the worker's CPU per request)"
    )
    for c in (16, 1):
        a, b = med[("capture off", c)], med[(on, c)]
        print(
            f"  {c:>2} callers: off {a[0]:8.1f} / {a[1]:.2f} / {a[2]:.2f} / {cpu[('capture off', c)]:.0f} us   "
            f"{on} {b[0]:8.1f} / {b[1]:.2f} / {b[2]:.2f} / {cpu[(on, c)]:.0f} us   "
            f"throughput {paired[c]:.3f}x (median of the rounds' ratios)"
        )
    print(
        f"  in this process, the handler on batches of 8: {own_off:.1f} us a request with capture off, "
        f"{own_on:.1f} us with it on ({own_on - own_off:+.1f} us)"
    )
    cost = 1 - paired[16]
    extra = cpu[(on, 16)] - cpu[("capture off", 16)]
    print(
        f"{on} costs {cost:.1%} of the throughput at 16 callers (target <= 5%: "
        f"{'met' if cost <= 0.05 else 'NOT met'}) and {extra:+.0f} us of the worker's CPU a request "
        f"({extra / cpu[('capture off', 16)]:+.1%}); {len(written)} records kept on disk (bounded)"
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
    data = [{"body": json.dumps(body).encode()} for _ in range(8)]
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(3):
        for label, handler in handlers.items():
            started = time.process_time()
            for _ in range(batches):
                handler.handle(data, context(8))
            times[label].append((time.process_time() - started) / batches / 8 * 1e6)
    return statistics.median(times["off"]), statistics.median(times["on"])


def worker_cpu_s(processes: list[psutil.Process]) -> float:
    """The CPU seconds (user + system) the worker processes have used so far."""
    total = 0.0
    for proc in processes:
        t = proc.cpu_times()
        total += t.user + t.system
    return total


if __name__ == "__main__":
    raise SystemExit(main())
