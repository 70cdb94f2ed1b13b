"""`torchship tune`: the fastest serving settings of a model within a p99 latency budget.

A guided search, not a blind grid (users of other tools report days-long sweeps): coordinate
ascent over the settings that matter most on a small machine, each trial a short load test of
the model registered under a temporary name:

1. batch size (1, 4, 8, 16) at one worker and a 5 ms batch delay;
2. batch delay (1, 5, 10, 20 ms) at the best batch size (skipped for batch 1);
3. workers (1 .. max) at the best batching.

The best trial is the highest throughput whose p99 meets the budget (when none does, the lowest
p99). Torch threads per worker stay at one: on two cores, more threads per worker measured far
slower, and changing them means repackaging.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import TorchServeError
from .load import run_load

__all__ = ["Trial", "tune", "best_trial"]


@dataclass(frozen=True)
class Trial:
    workers: int
    batch_size: int
    max_batch_delay: int
    throughput: float
    p50_ms: float
    p99_ms: float
    failed: int

    def meets(self, slo_p99_ms: float) -> bool:
        return self.p99_ms <= slo_p99_ms and self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def best_trial(trials: Sequence[Trial], slo_p99_ms: float) -> Trial:
    good = [t for t in trials if t.meets(slo_p99_ms)]
    if good:
        return max(good, key=lambda t: t.throughput)
    return min(trials, key=lambda t: t.p99_ms)


def tune(client, store: Path, name: str, version: str, payloads: Sequence[Any], *, slo_p99_ms: float,
         concurrency: int = 16, seconds: float = 5.0, warmup: float = 1.0, max_workers: int = 2,
         public_key: Path | None = None, log: Callable[[str], None] = print,
         engine: str = "python") -> tuple[list[Trial], Trial]:
    """`engine`: how each trial is loaded: "python" (the client's threads) or "wrk" (the first
    payload, by wrk: for tiny models the Python generator is the bottleneck)."""
    from archiver import ensure_verified

    from .bench import wrk_load

    archive = Path(store) / f"{name}-{version}.mar"
    ensure_verified(archive, public_key=public_key)
    temp = f"tune-{name}"
    trials: dict[tuple[int, int, int], Trial] = {}

    def trial(workers: int, batch: int, delay: int) -> Trial:
        key = (workers, batch, delay)
        if key in trials:
            return trials[key]
        client.register(archive.name, model_name=temp, initial_workers=workers, batch_size=batch,
                        max_batch_delay=delay)
        try:
            client.wait_until_ready(temp, timeout=120)
            if warmup:
                run_load(client, temp, payloads, concurrency=concurrency, duration=warmup)
            if engine == "wrk":
                w = wrk_load(client, temp, payloads[0], version=None, concurrency=concurrency, seconds=seconds)
                figures = (w["throughput_rps"], w["p50_ms"], w["p99_ms"], w["failed"])
            else:
                load = run_load(client, temp, payloads, concurrency=concurrency, duration=seconds)
                figures = (load.throughput, load.p(50), load.p(99), load.failed)
        finally:
            try:
                client.unregister(temp)
            except TorchServeError:
                pass
        result = Trial(workers, batch, delay, round(figures[0], 1), round(figures[1], 2), round(figures[2], 2),
                       figures[3])
        trials[key] = result
        log(f"workers {workers}  batch {batch:>2}  delay {delay:>2} ms  ->  {result.throughput:8.1f} req/s  "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms" + (f"  {result.failed} failed" if result.failed else ""))
        return result

    best = best_trial([trial(1, b, 5 if b > 1 else 0) for b in (1, 4, 8, 16)], slo_p99_ms)
    if best.batch_size > 1:
        best = best_trial([best] + [trial(1, best.batch_size, d) for d in (1, 5, 10, 20)], slo_p99_ms)
    best = best_trial([best] + [trial(w, best.batch_size, best.max_batch_delay) for w in range(1, max_workers + 1)],
                      slo_p99_ms)
    return list(trials.values()), best
