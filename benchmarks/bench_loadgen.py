"""How close `torchship bench` (Python threads over keep-alive sessions) gets to wrk, a C load
generator, against the same model on the same server, in one run.

    .venv/bin/python benchmarks/bench_loadgen.py [--model mlp] [--seconds 8] [--concurrency 16]

Needs wrk (Debian: apt-get install wrk) and a running `make demo` server (or --config FILE).
Prints both side by side with the ratio; the JVM is warmed up first.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torchship import TorchServe  # noqa: E402
from torchship.bench import bench  # noqa: E402


def wrk(url: str, key: str | None, body: bytes, seconds: float, concurrency: int,
        content_type: str = "application/json") -> dict:
    """One wrk run (2 threads) POSTing `body`; its throughput and latency percentiles."""
    payload = tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False)
    payload.write(body)
    payload.close()
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\n'
                 f'local f = io.open("{payload.name}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
                 f'wrk.headers["Content-Type"] = "{content_type}"\n'
                 + (f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""))
    script.close()
    run = subprocess.run(["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", "-s", script.name, url],
                         capture_output=True, text=True, timeout=seconds + 60)
    Path(script.name).unlink()
    Path(payload.name).unlink()
    out = run.stdout
    if "Requests/sec" not in out:
        raise SystemExit(f"error: wrk failed: {(run.stderr or out).strip()[:300]}")

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"throughput_rps": rps, "p50_ms": ms("50%"), "p90_ms": ms("90%"), "p99_ms": ms("99%"),
            "failed": int(non2xx.group(1)) if non2xx else 0}


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
    body = json.loads(subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_request.py"), args.model],
                                     capture_output=True, text=True, check=True).stdout)
    key = client.keys.key("inference")
    url = f"{client.urls['inference']}/predictions/{args.model}"
    print("warming up the JVM ...", file=sys.stderr)
    bench(client, args.model, [body], concurrency=args.concurrency, duration=10)
    ours = bench(client, args.model, [body], concurrency=args.concurrency, duration=args.seconds)
    theirs = wrk(url, key, json.dumps(body).encode(), args.seconds, args.concurrency)
    print(f"\n{args.model}, concurrency {args.concurrency}, {args.seconds:g} s each, same server")
    print(f"{'generator':18} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for label, r in (("wrk (C)", theirs), ("torchship bench", ours)):
        print(f"{label:18} {r['throughput_rps']:9.1f} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['failed']:7d}")
    print(f"\ntorchship bench reaches {ours['throughput_rps'] / theirs['throughput_rps']:.2f}x of wrk's throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
