"""A worker autoscaler for TorchServe, which has only fixed min/max workers.

Each tick it reads the metrics port (requests and queue time per model, as counters, so it uses
their change since the last tick) and the model's description (workers, pending requests), then:

- scales UP (in proportion to how far the queue time is over target: at least one worker, at
  most doubling) when the mean time a request waited in the queue over the last tick
  is above `target_queue_ms` (or requests are pending with every worker busy), at most once per
  `up_cooldown` seconds;
- scales DOWN by one worker when the queue time has stayed below a quarter of the target for
  `down_stable` ticks in a row, at most once per `down_cooldown` seconds.

The gap between the two thresholds (hysteresis) and the cool-downs keep it from flapping; the
quick, one-step scale-up keeps it from lagging. It stops cleanly on Ctrl-C or SIGTERM and leaves
the model at its current size, within [min, max].
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchship.sdk.errors import BadInput, TorchServeError

if TYPE_CHECKING:
    from torchship.sdk.client import TorchServe

__all__ = ["Autoscaler", "Decision"]


@dataclass(frozen=True)
class Decision:
    """One scaling decision: when, from how many workers to how many, why, and the figures behind it."""

    time: float
    workers_from: int
    workers_to: int
    reason: str
    queue_ms: float
    rate: float

    def __str__(self) -> str:
        verb = (
            "up" if self.workers_to > self.workers_from else "down" if self.workers_to < self.workers_from else "hold"
        )
        return (
            f"scale {verb} {self.workers_from} -> {self.workers_to}: {self.reason} "
            f"(queue {self.queue_ms:.1f} ms, {self.rate:.1f} req/s)"
        )


@dataclass
class Autoscaler:
    """Scale one model's workers within [min_workers, max_workers] from its queue time.

    See the module docstring for the rules. `step()` is one tick (tests drive it with their own
    clock); `run()` ticks every `interval` seconds until `stop()`.

    Args:
        client: the server's client.
        name: the model; `version` one of its versions (default: the default version).
        target_queue_ms: the queue time above which it scales up.
        log: where each decision and notice is written (one line each).
        on_decision: called with each decision once the server applied it.
    """

    client: TorchServe
    name: str
    min_workers: int
    max_workers: int
    version: str | None = None
    target_queue_ms: float = 50.0
    interval: float = 1.0
    up_cooldown: float = 3.0
    down_cooldown: float = 10.0
    down_stable: int = 5
    log: Callable[[str], None] = print
    # called with each decision once the server has applied it (the project records it there)
    on_decision: Callable[[Decision], None] | None = None
    decisions: list[Decision] = field(default_factory=list)
    samples: list[tuple[float, int, float, float]] = field(default_factory=list)  # (t, workers, queue ms, rate)

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise BadInput(f"need 1 <= min ({self.min_workers}) <= max ({self.max_workers})")
        self._last: tuple[float, float, float] | None = None  # (time, requests, queue microseconds)
        self._last_change = 0.0
        self._calm_ticks = 0
        self._stop = threading.Event()

    # ------------------------------------------------------------------ one tick

    def _counters(self) -> tuple[float, float]:
        m = self.client.metrics()
        labels = {"model_name": self.name}
        return (m.total("ts_inference_requests_total", **labels), m.total("ts_queue_latency_microseconds", **labels))

    def step(self, now: float | None = None) -> Decision | None:
        """Run one tick: read the counters and the model, and scale if the rules say so; the decision, if any."""
        now = time.monotonic() if now is None else now
        desc = self.client.describe(self.name, self.version)[0]
        workers = desc.min_workers
        requests, queue_us = self._counters()
        if self._last is None:
            self._last = (now, requests, queue_us)
            if not self.min_workers <= workers <= self.max_workers:  # bring it into range at once
                return self._scale(
                    now, workers, min(max(workers, self.min_workers), self.max_workers), "outside [min, max]", 0.0, 0.0
                )
            return None
        t0, r0, q0 = self._last
        self._last = (now, requests, queue_us)
        served = max(requests - r0, 0.0)
        rate = served / max(now - t0, 1e-6)
        queue_ms = (queue_us - q0) / served / 1000 if served else 0.0
        pending = desc.pending_requests or 0
        self.samples.append((now, workers, queue_ms, rate))

        busy = pending > desc.ready_workers * max(desc.batch_size, 1)
        if (queue_ms > self.target_queue_ms or busy) and workers < self.max_workers:
            self._calm_ticks = 0
            if now - self._last_change >= self.up_cooldown:
                why = (
                    f"queue {queue_ms:.1f} ms > target {self.target_queue_ms:g} ms"
                    if queue_ms > self.target_queue_ms
                    else f"{pending} requests pending"
                )
                # proportional to how far over target, at least +1, at most doubling per step
                wanted = math.ceil(workers * max(queue_ms, 1e-9) / self.target_queue_ms)
                target = min(self.max_workers, max(workers + 1, min(workers * 2, wanted)))
                return self._scale(now, workers, target, why, queue_ms, rate)
            return None
        if queue_ms < self.target_queue_ms / 4 and not busy and workers > self.min_workers:
            self._calm_ticks += 1
            if self._calm_ticks >= self.down_stable and now - self._last_change >= self.down_cooldown:
                self._calm_ticks = 0
                return self._scale(
                    now,
                    workers,
                    workers - 1,
                    f"queue below {self.target_queue_ms / 4:g} ms for {self.down_stable} ticks",
                    queue_ms,
                    rate,
                )
        else:
            self._calm_ticks = 0
        return None

    def _scale(self, now: float, current: int, target: int, reason: str, queue_ms: float, rate: float) -> Decision:
        self.client.scale(self.name, version=self.version, min_workers=target, max_workers=target, synchronous=True)
        self._last_change = now
        decision = Decision(now, current, target, reason, queue_ms, rate)
        self.decisions.append(decision)
        self.log(str(decision))
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision

    # ------------------------------------------------------------------ the loop

    def stop(self) -> None:
        """Ask `run()` to return after the current tick (safe from another thread or a signal handler)."""
        self._stop.set()

    def run(self, *, duration: float | None = None, handle_signals: bool = False) -> list[Decision]:
        """Tick every `interval` seconds until stop(), `duration`, or (with handle_signals) SIGINT/SIGTERM."""
        previous: dict[signal.Signals, Any] = {}
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self._stop.set())
        end = time.monotonic() + duration if duration else None
        try:
            while not self._stop.is_set() and (end is None or time.monotonic() < end):
                try:
                    self.step()
                except TorchServeError as exc:
                    self.log(f"tick skipped: {exc}")
                self._stop.wait(self.interval)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            try:
                workers = self.client.describe(self.name, self.version)[0].min_workers
                self.log(f"autoscaler stopped; {self.name} keeps {workers} worker(s)")
            except TorchServeError:
                pass
        return self.decisions
