"""How close `torchship bench`'s Python engine (threads over keep-alive sessions) gets to its wrk
engine (a C load generator), against the same model on the same server, in one run.

    .venv/bin/python benchmarks/bench_loadgen.py [--model mlp] [--seconds 8] [--concurrency 16]

Needs wrk (Debian: apt-get install wrk) and a running `make demo` server (or --config FILE).
Prints both side by side with the ratio; the JVM is warmed up first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torchship import TorchServe  # noqa: E402
from torchship.perf.bench import bench  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--config", type=Path, default=ROOT / "config.properties")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("error: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    client = TorchServe.from_config(args.config)
    body = json.loads(
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "demo_request.py"), args.model],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    print("warming up the JVM ...", file=sys.stderr)
    bench(client, args.model, [body], concurrency=args.concurrency, duration=10, engine="wrk")
    ours = bench(client, args.model, [body], concurrency=args.concurrency, duration=args.seconds, engine="python")
    theirs = bench(client, args.model, [body], concurrency=args.concurrency, duration=args.seconds, engine="wrk")
    print(f"\n{args.model}, concurrency {args.concurrency}, {args.seconds:g} s each, same server")
    print(f"{'generator':18} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for label, r in (("wrk (C)", theirs), ("Python threads", ours)):
        print(
            f"{label:18} {r['throughput_rps']:9.1f} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} {r['p99_ms']:8.2f} "
            f"{r['failed']:7d}"
        )
    print(
        f"\nthe Python engine reaches {ours['throughput_rps'] / theirs['throughput_rps']:.2f}x of wrk's throughput "
        "(torchship bench and tune use wrk when it is installed)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
