"""Latency and throughput across loads: one setting measured at several concurrencies, and load profiles.

A serving setting is good or bad only at a load: batching that doubles throughput with sixteen callers
can make a lone caller wait out the whole batch delay. `measure` loads a registered model at each
concurrency of a list (closed loop: that many callers, each sending its next request when the last one
is answered) and returns one `Point` per concurrency: the setting's latency/throughput curve.

A `Profile` is how a service's time is shared between loads, e.g. ``1:0.7,16:0.3`` (70% of the time one
caller, 30% sixteen). A setting's figures over a profile: the time-weighted mean throughput (maximising it
is the same as minimising the mean latency of all the profile's requests, since a closed loop of `c`
callers waits `c / throughput` per request), the p99 of its worst load (a latency budget holds at every
load), and the request-weighted p50.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchship.sdk.errors import BadInput

if TYPE_CHECKING:
    from torchship.sdk.client import TorchServe

__all__ = [
    "LEVELS",
    "Point",
    "Profile",
    "parse_profile",
    "load_point",
    "measure",
    "over_profile",
    "curve_table",
    "plot_curves",
]

LEVELS = (1, 4, 16, 64)  # the concurrencies a curve is measured at unless told otherwise

Profile = Mapping[int, float]  # concurrency -> share of the time


@dataclass(frozen=True)
class Point:
    """What one load test at one concurrency measured."""

    concurrency: int
    throughput: float
    p50_ms: float
    p99_ms: float
    failed: int

    def to_dict(self) -> dict[str, Any]:
        """Return the point as plain data."""
        return dict(self.__dict__)


def parse_profile(text: str) -> dict[int, float]:
    """Parse ``C:W,C:W`` (concurrency: share of the time) into a profile; the shares need not add to 1."""
    profile: dict[int, float] = {}
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)\s*:\s*(\d+(?:\.\d*)?|\.\d+)", part)
        if not m:
            raise BadInput(f"load profile {text!r}: each part is CONCURRENCY:SHARE, e.g. 1:0.7,16:0.3 (got {part!r})")
        concurrency, share = int(m.group(1)), float(m.group(2))
        if not 1 <= concurrency <= 1024:
            raise BadInput(f"load profile {text!r}: concurrency {concurrency} is not within 1..1024")
        if concurrency in profile:
            raise BadInput(f"load profile {text!r}: concurrency {concurrency} is given twice")
        if share <= 0:
            raise BadInput(f"load profile {text!r}: the share of concurrency {concurrency} must be above 0")
        profile[concurrency] = share
    return profile


def load_point(
    client: TorchServe, name: str, payloads: Sequence[Any], *, concurrency: int, seconds: float, engine: str
) -> Point:
    """Load the model `name` (its default version) at one concurrency for `seconds`.

    `engine`: "wrk" (the first payload, from a C load generator: the Python client cannot saturate a
    server for tiny models) or "python" (the client's threads, every payload in turn).
    """
    from torchship.perf.bench import wrk_load
    from torchship.perf.load import run_load

    if engine == "wrk":
        w = wrk_load(client, name, payloads[0], version=None, concurrency=concurrency, seconds=seconds)
        figures = (w["throughput_rps"], w["p50_ms"], w["p99_ms"], w["failed"])
    else:
        load = run_load(client, name, payloads, concurrency=concurrency, duration=seconds)
        figures = (load.throughput, load.p(50), load.p(99), load.failed)
    return Point(concurrency, round(figures[0], 1), round(figures[1], 2), round(figures[2], 2), int(figures[3]))


def measure(
    client: TorchServe,
    name: str,
    payloads: Sequence[Any],
    *,
    levels: Sequence[int] = LEVELS,
    seconds: float = 3.0,
    engine: str = "python",
    log: Callable[[str], None] | None = None,
) -> list[Point]:
    """The latency/throughput curve of the registered model `name`: one point per concurrency of `levels`."""
    points = []
    for c in levels:
        point = load_point(client, name, payloads, concurrency=c, seconds=seconds, engine=engine)
        if log:
            log(
                f"  concurrency {c:>3}: {point.throughput:8.1f} req/s  p50 {point.p50_ms:7.2f} ms  "
                f"p99 {point.p99_ms:7.2f} ms" + (f"  {point.failed} failed" if point.failed else "")
            )
        points.append(point)
    return points


def over_profile(points: Sequence[Point], profile: Profile) -> tuple[float, float, float, int]:
    """Return (throughput, p50 ms, p99 ms, failed) of a setting over a load profile.

    From its points at the profile's concurrencies: the time-weighted mean throughput, the request-weighted
    p50, the worst p99, all failures.
    """
    by_c = {p.concurrency: p for p in points}
    missing = sorted(set(profile) - set(by_c))
    if missing:
        raise BadInput(f"no measurement at concurrency {missing} of the load profile")
    requests = sum(share * by_c[c].throughput for c, share in profile.items())  # per unit of time
    throughput = requests / sum(profile.values())
    p50 = (
        sum(share * by_c[c].throughput * by_c[c].p50_ms for c, share in profile.items()) / requests
        if requests
        else max(by_c[c].p50_ms for c in profile)
    )
    p99 = max(by_c[c].p99_ms for c in profile)
    return throughput, p50, p99, sum(by_c[c].failed for c in profile)


def plot_curves(curves: Mapping[str, Sequence[Point]], path: Path, title: str) -> None:
    """Throughput and p50/p99 against concurrency, one line per setting, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, points in curves.items():
        xs = [p.concurrency for p in points]
        ax1.plot(xs, [p.throughput for p in points], "o-", label=label)
        line = ax2.plot(xs, [p.p50_ms for p in points], "o-", label=f"{label} p50")[0]
        ax2.plot(xs, [p.p99_ms for p in points], "o:", color=line.get_color(), label=f"{label} p99")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (callers)")
        ax.legend(fontsize=8)
    ax1.set_ylabel("req/s")
    ax1.set_title("throughput")
    ax2.set_ylabel("ms")
    ax2.set_yscale("log")
    ax2.set_title("latency")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def curve_table(curves: Mapping[str, Sequence[Point]]) -> tuple[list[str], list[list[Any]]]:
    """Return (headers, rows) of curves side by side, one row per concurrency.

    With two curves, the second's throughput and p50 also as ratios of the first's.
    """
    labels = list(curves)
    headers = ["callers"] + [f"{label} {figure}" for label in labels for figure in ("req/s", "p50 ms", "p99 ms")]
    pair = len(labels) == 2
    if pair:
        headers += [f"{labels[1]}/{labels[0]} req/s", f"{labels[1]}/{labels[0]} p50"]
    by_label = {label: {p.concurrency: p for p in points} for label, points in curves.items()}
    levels = sorted({c for points in by_label.values() for c in points})
    rows = []
    for c in levels:
        row: list[Any] = [c]
        for label in labels:
            p = by_label[label].get(c)
            row += [p.throughput, p.p50_ms, p.p99_ms] if p else ["-", "-", "-"]
        if pair:
            a, b = (by_label[label].get(c) for label in labels)
            row += [
                f"{b.throughput / a.throughput:.2f}x" if a and b and a.throughput else "-",
                f"{b.p50_ms / a.p50_ms:.2f}x" if a and b and a.p50_ms else "-",
            ]
        rows.append(row)
    return headers, rows
