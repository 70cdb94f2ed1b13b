"""Drive wrk, the C load generator, for `torchship bench` and `tune`.

A Python load generator sharing a small machine with the server becomes the bottleneck for
tiny models (measured: 0.21x of wrk's throughput for mlp). When wrk is installed (Debian:
`apt-get install wrk`) bench and tune use it for single-body, non-streaming load tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from torchship.sdk.errors import LoadGeneratorError

__all__ = ["available", "run", "parse"]


def available() -> bool:
    """Whether wrk is installed (on PATH)."""
    return shutil.which("wrk") is not None


def run(
    url: str,
    body: bytes,
    *,
    seconds: float,
    concurrency: int,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """POST `body` to `url` from `concurrency` connections for `seconds`; wrk's figures."""
    with tempfile.TemporaryDirectory(prefix="torchship-wrk-") as folder:
        payload = Path(folder) / "body"
        payload.write_bytes(body)
        lines = [
            'wrk.method = "POST"',
            f'local f = io.open("{payload}", "rb")',
            'wrk.body = f:read("*a")',
            "f:close()",
            f'wrk.headers["Content-Type"] = "{content_type}"',
        ]
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
        script = Path(folder) / "post.lua"
        script.write_text("\n".join(lines) + "\n")
        cmd = [
            "wrk",
            f"-t{min(2, concurrency)}",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        except FileNotFoundError:
            raise LoadGeneratorError(
                "wrk is not installed (Debian: apt-get install wrk), or use --engine python"
            ) from None
        except subprocess.TimeoutExpired:
            raise LoadGeneratorError(f"wrk did not finish within {seconds + 60:.0f} s") from None
    if "Requests/sec" not in done.stdout:
        raise LoadGeneratorError(f"wrk failed: {(done.stderr or done.stdout).strip()[:300] or 'no output'}")
    try:
        return parse(done.stdout)
    except (AttributeError, ValueError) as exc:
        raise LoadGeneratorError(f"wrk's output could not be read ({exc}): {done.stdout.strip()[:300]}") from None


def _found(match: re.Match[str] | None, what: str) -> re.Match[str]:
    if match is None:
        raise ValueError(f"no {what} in it")
    return match


def _ms(text: str) -> float:
    value, unit = _found(re.match(r"([\d.]+)(us|ms|s)", text), "duration").groups()
    return float(value) / 1000 if unit == "us" else float(value) * 1000 if unit == "s" else float(value)


def parse(out: str) -> dict[str, Any]:
    """wrk --latency output -> throughput, percentiles, and failures (non-2xx and socket errors)."""
    pct = {int(p): _ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M)}
    sent = int(_found(re.search(r"(\d+) requests in", out), "request count").group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    max_ms = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    return {
        "sent": sent,
        "ok": sent - (int(non2xx.group(1)) if non2xx else 0),
        "failed": failed,
        "p50_ms": pct.get(50),
        "p90_ms": pct.get(90),
        "p99_ms": pct.get(99),
        "max_ms": _ms(max_ms.group(1)) if max_ms else None,
        "throughput_rps": float(_found(re.search(r"Requests/sec:\s+([\d.]+)", out), "Requests/sec").group(1)),
    }
