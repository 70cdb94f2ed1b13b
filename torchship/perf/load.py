"""A small concurrent load generator over the client's pooled keep-alive sessions.

Used by rollouts (the latency gate) and by tests that keep traffic flowing during changes.
Each thread has its own session; latencies are measured around whole requests, retries included,
as a caller experiences them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchship.sdk.errors import APIError, BadInput, TorchServeError

if TYPE_CHECKING:
    from torchship.sdk.client import TorchServe

__all__ = ["LoadResult", "run_load", "run_threads", "percentile"]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class LoadResult:
    """What a load test measured: each answered request's latency and end time, statuses and errors."""

    latencies_ms: list[float] = field(default_factory=list)
    completed_s: list[float] = field(default_factory=list)  # when each answered request finished
    statuses: Counter[int | str] = field(default_factory=Counter)  # HTTP status, or "unreachable"
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        """How many requests were sent."""
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        """How many requests got no 200 answer."""
        return self.sent - self.statuses.get(200, 0)

    def p(self, q: float) -> float:
        """Return the q-th latency percentile (0-100) of the answered requests, in ms."""
        return percentile(self.latencies_ms, q)

    @property
    def throughput(self) -> float:
        """Answered requests per second."""
        return self.statuses.get(200, 0) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as plain data: counts, percentiles, throughput and the first errors."""
        return {
            "sent": self.sent,
            "ok": self.statuses.get(200, 0),
            "failed": self.failed,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            "p50_ms": round(self.p(50), 3),
            "p90_ms": round(self.p(90), 3),
            "p99_ms": round(self.p(99), 3),
            "max_ms": round(max(self.latencies_ms), 3) if self.latencies_ms else None,
            "throughput_rps": round(self.throughput, 1),
            "seconds": round(self.seconds, 2),
            "first_errors": self.errors[:5],
        }


def run_load(
    client: TorchServe,
    name: str,
    payloads: Sequence[Any],
    *,
    version: str | None = None,
    concurrency: int = 4,
    requests: int | None = None,
    duration: float | None = None,
    stop: threading.Event | None = None,
) -> LoadResult:
    """Send payloads (cycled) until `requests` are sent, `duration` seconds pass, or `stop` is set."""
    if not payloads:
        raise BadInput("run_load needs at least one payload")
    if requests is None and duration is None and stop is None:
        raise BadInput("give requests, duration or a stop event")
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(10**12))
    deadline = time.monotonic() + duration if duration else None

    def worker() -> None:
        while True:
            if stop is not None and stop.is_set():
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            with lock:
                i = next(counter)
            if requests is not None and i >= requests:
                return
            start = time.perf_counter()
            status: int | str
            error: str | None
            try:
                client.predict(name, payloads[i % len(payloads)], version=version)
                status, error = 200, None
            except APIError as exc:
                status, error = exc.status, str(exc)
            except TorchServeError as exc:
                status, error = "unreachable", str(exc)
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                result.statuses[status] += 1
                if status == 200:
                    result.latencies_ms.append(elapsed)
                    result.completed_s.append(time.perf_counter() - begin)
                elif error:
                    result.errors.append(error)

    begin = time.perf_counter()
    result.seconds = run_threads(worker, concurrency)
    return result


def run_threads(worker: Callable[[], None], concurrency: int) -> float:
    """Run `worker` in `concurrency` threads until each returns; the seconds it took."""
    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started
