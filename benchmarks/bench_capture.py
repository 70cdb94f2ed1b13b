"""What sampled capture costs: the same model served with capture off and at sample 1.0, side by side.

    .venv/bin/python benchmarks/bench_capture.py [--model mlp] [--seconds 5] [--rounds 3]

One TorchServe (torchship's config, its own ports and folder), the model registered twice under two
names with the same settings (the demo's: one worker, batch 8, 1 ms); capture turned on for one at
sample 1.0 (every request and answer written), wrk loading each in turn at 16 callers and at 1, the
rounds interleaved so that a noisy stretch slows both (`--sample F` for another rate). Prints the
medians and the ratios; the target: at most 5% of the throughput at sample 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

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
                figures: dict[tuple[str, int], list] = {(label, c): [] for label in names for c in (16, 1)}
                for r in range(args.rounds):
                    for c in (16, 1):
                        for label, name in names.items():
                            p = load_point(client, name, body, concurrency=c, seconds=args.seconds, engine="wrk")
                            figures[(label, c)].append(p)
                            print(
                                f"round {r + 1}/{args.rounds}  {label:<15} c{c:<3} {p.throughput:8.1f} req/s  "
                                f"p50 {p.p50_ms:6.2f}  p99 {p.p99_ms:7.2f}"
                                + (f"  {p.failed} failed" if p.failed else ""),
                                flush=True,
                            )
                written = capture.records(work / "capture", names[on], "1.0")
        finally:
            server.stop()
    med = {
        k: (
            statistics.median(p.throughput for p in v),
            statistics.median(p.p50_ms for p in v),
            statistics.median(p.p99_ms for p in v),
        )
        for k, v in figures.items()
    }
    print(f"\n{args.model}: median of {args.rounds} rounds of {args.seconds:g} s (req/s, p50 ms, p99 ms)")
    for c in (16, 1):
        a, b = med[("capture off", c)], med[(on, c)]
        print(
            f"  {c:>2} callers: off {a[0]:8.1f} / {a[1]:.2f} / {a[2]:.2f}   {on} {b[0]:8.1f} / {b[1]:.2f} / "
            f"{b[2]:.2f}   throughput {b[0] / a[0]:.3f}x"
        )
    cost = 1 - med[(on, 16)][0] / med[("capture off", 16)][0]
    print(
        f"{on} costs {cost:.1%} of the throughput at 16 callers "
        f"(target <= 5%: {'met' if cost <= 0.05 else 'NOT met'}); {len(written)} records kept on disk (bounded)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
