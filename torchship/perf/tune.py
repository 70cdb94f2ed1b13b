"""`torchship tune`: the fastest serving settings of a model within a p99 latency budget, at a load.

A guided search, not a blind grid (users of other tools report days-long sweeps): coordinate
ascent over the settings that matter most on a small machine, each trial a short load test of
the model registered under a temporary name of its own (tune-NAME-1, tune-NAME-2, ...):

1. batch size (1, 4, 8, 16) at one worker and a 5 ms batch delay;
2. batch delay (0, 1, 5, 10 ms) at the best batch size (skipped for batch 1). TorchServe 0.12
   waits up to the delay for a batch's second and later requests only while its queue is empty:
   at 0 ms a batch takes the first request and at most one more that is already queued (its
   frontend's `Model.pollBatch`), so 0 ms never makes a lone caller wait and batches little;
3. workers (1 .. max) at the best batching, each with that batch size and with it shared among
   the workers (batch / workers: the same requests in flight, in batches that overlap instead of
   one worker computing while the frontend waits);
4. torch threads per worker at the best batching: 2 and all the cores a worker can have
   (workers x threads <= cores), for one worker and for the best number of workers;
5. the two fastest trials within the budget are measured again, and decided on the mean of
   their runs (with the worse p99): one short run on a shared machine can be lucky.

Each trial is measured at the load it is tuned for: one concurrency, or a load profile (how the
service's time is shared between concurrencies, `torchship.perf.curve`), and scored by its
time-weighted mean throughput over the profile, which is the same as the lowest mean latency of
the profile's requests. The best trial is the highest such throughput whose p99 meets the budget
at every load of the profile (when none does, the lowest p99). Steps 1-3 run the archive as
packaged (its model-config's `handler.threads`, one for the examples); threads are part of the
archive, so step 4 registers a temporary copy whose model-config asks for more, built and signed
with the project's key and verified like any archive (nothing unverified reaches the server), and
a winner with other threads than packaged says how to repackage.

`compare_curves` then measures the winner and the settings a plain deploy gives at 1, 4, 16 and 64
callers, side by side: what tuning buys at every load, and what it costs where it was not tuned.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchship.ops.takedown import unregister_after_load
from torchship.perf.curve import LEVELS, Point, Profile, load_point, measure, over_profile
from torchship.perf.load import run_load
from torchship.sdk.errors import BadInput

if TYPE_CHECKING:
    from torchship.sdk.client import TorchServe

__all__ = [
    "Trial",
    "tune",
    "best_trial",
    "compare_curves",
    "packaged_threads",
    "threads_copy",
    "thread_splits",
    "unregister_after_load",
    "DELAYS_MS",
]

DELAYS_MS = (0, 1, 5, 10)  # step 2's batch delays


@dataclass(frozen=True)
class Trial:
    """One setting tried by `tune` (workers, batching, threads) and what its load test measured.

    `throughput`, `p50_ms`, `p99_ms` and `failed` are over the load the search was for (one concurrency, or
    a profile: see `torchship.perf.curve.over_profile`); `points` are the figures at each concurrency.
    """

    workers: int
    batch_size: int
    max_batch_delay: int
    threads: int
    throughput: float
    p50_ms: float
    p99_ms: float
    failed: int
    runs: int = 1
    points: tuple[Point, ...] = ()

    def meets(self, slo_p99_ms: float) -> bool:
        """Whether the trial's p99 is within `slo_p99_ms` with no request failed."""
        return self.p99_ms <= slo_p99_ms and self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        """Return the trial as plain data."""
        return {**self.__dict__, "points": [p.to_dict() for p in self.points]}

    def settings(self) -> dict[str, int]:
        """The trial's serving settings, as `compare_curves` takes them."""
        return {
            "workers": self.workers,
            "batch_size": self.batch_size,
            "max_batch_delay": self.max_batch_delay,
            "threads": self.threads,
        }

    def again(self, other: Trial) -> Trial:
        """This trial measured once more: mean throughput and p50, the worse p99, all failures (per load too)."""
        n = self.runs + 1

        def mean(a: float, b: float) -> float:
            return (a * self.runs + b) / n

        by_c = {p.concurrency: p for p in other.points}
        points = tuple(
            Point(
                p.concurrency,
                round(mean(p.throughput, by_c[p.concurrency].throughput), 1),
                round(mean(p.p50_ms, by_c[p.concurrency].p50_ms), 2),
                max(p.p99_ms, by_c[p.concurrency].p99_ms),
                p.failed + by_c[p.concurrency].failed,
            )
            for p in self.points
            if p.concurrency in by_c
        )
        return Trial(
            self.workers,
            self.batch_size,
            self.max_batch_delay,
            self.threads,
            round(mean(self.throughput, other.throughput), 1),
            round(mean(self.p50_ms, other.p50_ms), 2),
            max(self.p99_ms, other.p99_ms),
            self.failed + other.failed,
            n,
            points,
        )


def best_trial(trials: Sequence[Trial], slo_p99_ms: float) -> Trial:
    """Return the highest throughput that meets the budget, else the lowest p99."""
    good = [t for t in trials if t.meets(slo_p99_ms)]
    if good:
        return max(good, key=lambda t: t.throughput)
    return min(trials, key=lambda t: t.p99_ms)


def packaged_threads(archive: Path) -> int:
    """Torch threads per worker that an archive's model-config asks for (the handlers' default: 1)."""
    import yaml

    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        member = manifest.get("model", {}).get("configFile")
        config = yaml.safe_load(zf.read(member)) if member and member in zf.namelist() else {}
    return int(((config or {}).get("handler") or {}).get("threads", 1))


def threads_copy(
    archive: Path, threads: int, store: Path, key_dir: Path, *, name: str, version: str, public_key: Path | None = None
) -> Path:
    """Build `store/<name>-<version>.mar`: `archive` with a model-config asking for `threads` per worker.

    It is built and signed with the project's key like any archive (the source is verified first), so it
    passes the same verification before TorchServe sees it.
    """
    from torchship.archiver.derive import derive

    return derive(
        archive,
        store,
        key_dir,
        name=name,
        version=version,
        config={"handler": {"threads": threads}},
        public_key=public_key,
    ).path


def thread_splits(best_workers: int, cores: int, packaged: int) -> list[tuple[int, int]]:
    """Return the (workers, threads) pairs that step 4 tries.

    2 threads and a whole share of the cores, at one worker and at the best number of workers, never more
    threads in all than cores.
    """
    splits = {(w, t) for w in {1, best_workers} for t in (2, cores // w) if t > 1 and t != packaged and w * t <= cores}
    return sorted(splits)


def tune(
    client: TorchServe,
    store: Path,
    name: str,
    version: str,
    payloads: Sequence[Any],
    *,
    slo_p99_ms: float,
    concurrency: int = 16,
    profile: Profile | None = None,
    seconds: float = 5.0,
    warmup: float = 1.0,
    max_workers: int = 2,
    cores: int | None = None,
    public_key: Path | None = None,
    key_dir: Path | None = None,
    log: Callable[[str], None] = print,
    engine: str = "python",
) -> tuple[list[Trial], Trial]:
    """Search for the fastest settings of `name` `version` within `slo_p99_ms`; every trial and the best.

    The load each trial is measured at: `profile` (concurrency -> share of the time; `seconds` at each of its
    concurrencies), else `concurrency` alone. `engine`: how each trial is loaded: "python" (the client's
    threads) or "wrk" (the first payload, by wrk: for tiny models the Python generator is the bottleneck).
    `cores`: what the server may use (default: the cores this process may run on; tune runs beside the
    server). `key_dir`: the project's signing keys, which sign the trial archives of step 4 (without it, step
    4 is skipped): every archive a trial registers passes verification first.
    """
    from torchship.archiver import archive_path, ensure_verified

    archive = archive_path(store, name, version)
    ensure_verified(archive, public_key=public_key)
    load: dict[int, float] = dict(profile) if profile else {concurrency: 1.0}
    if not load or any(share <= 0 for share in load.values()):
        raise BadInput("a load profile needs at least one concurrency with a share above 0")
    packaged = packaged_threads(archive)
    cores = cores or len(os.sched_getaffinity(0))
    trials: dict[tuple[int, int, int, int], Trial] = {}
    served = _Served(client, store, archive, name, public_key=public_key, key_dir=key_dir, packaged=packaged)

    def trial(workers: int, batch: int, delay: int, threads: int = packaged, again: bool = False) -> Trial:
        key = (workers, batch, delay, threads)
        if key in trials and not again:
            return trials[key]
        with served.setting(workers, batch, delay, threads) as temp:
            if warmup:
                run_load(client, temp, payloads, concurrency=max(load), duration=warmup)
            points = tuple(
                load_point(client, temp, payloads, concurrency=c, seconds=seconds, engine=engine) for c in sorted(load)
            )
        throughput, p50, p99, failed = over_profile(points, load)
        result = Trial(
            workers, batch, delay, threads, round(throughput, 1), round(p50, 2), round(p99, 2), failed, 1, points
        )
        if again:
            result = trials[key].again(result)
        trials[key] = result
        log(
            (f"again, mean of {result.runs} runs: " if again else "")
            + f"workers {workers}  threads {threads}  batch {batch:>2}  "
            f"delay {delay:>2} ms  ->  "
            f"{result.throughput:8.1f} req/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
            + (f"  {result.failed} failed" if result.failed else "")
        )
        return result

    best = best_trial([trial(1, b, 5 if b > 1 else 0) for b in (1, 4, 8, 16)], slo_p99_ms)
    if best.batch_size > 1:
        best = best_trial([best] + [trial(1, best.batch_size, d) for d in DELAYS_MS], slo_p99_ms)
    batch, delay = best.batch_size, best.max_batch_delay
    best = best_trial(
        [best] + [trial(w, b, delay) for w in range(1, max_workers + 1) for b in sorted({batch, max(1, batch // w)})],
        slo_p99_ms,
    )
    if key_dir is None:
        log("threads step skipped: no signing keys to sign its trial archives with (pass key_dir)")
    else:
        best = best_trial(
            [best]
            + [
                trial(w, best.batch_size, best.max_batch_delay, t)
                for w, t in thread_splits(best.workers, cores, packaged)
            ],
            slo_p99_ms,
        )
    # one short run can be lucky: measure the two leaders again and decide on the mean
    leaders = sorted((t for t in trials.values() if t.meets(slo_p99_ms)), key=lambda t: -t.throughput)[:2]
    if len(leaders) == 2:
        best = best_trial(
            [trial(t.workers, t.batch_size, t.max_batch_delay, t.threads, again=True) for t in leaders], slo_p99_ms
        )
    return list(trials.values()), best


def compare_curves(
    client: TorchServe,
    store: Path,
    name: str,
    version: str,
    settings: Mapping[str, Mapping[str, int]],
    payloads: Sequence[Any],
    *,
    levels: Sequence[int] = LEVELS,
    seconds: float = 3.0,
    engine: str = "python",
    public_key: Path | None = None,
    key_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, list[Point]]:
    """Measure the latency/throughput curve of each labelled setting of `name` `version`.

    Each setting is {"workers", "batch_size", "max_batch_delay", "threads"} (threads default to the archive's);
    they are measured one after the other on the same server. Returns {label: points at `levels`}.
    """
    from torchship.archiver import archive_path, ensure_verified

    archive = archive_path(store, name, version)
    ensure_verified(archive, public_key=public_key)
    packaged = packaged_threads(archive)
    served = _Served(client, store, archive, name, public_key=public_key, key_dir=key_dir, packaged=packaged)
    curves = {}
    for label, s in settings.items():
        workers, batch, delay = s["workers"], s["batch_size"], s["max_batch_delay"]
        threads = s.get("threads", packaged)
        log(f"{label}: workers {workers}  threads {threads}  batch {batch}  delay {delay} ms")
        with served.setting(workers, batch, delay, threads) as temp:
            run_load(client, temp, payloads, concurrency=max(levels), duration=min(1.0, seconds))
            curves[label] = measure(client, temp, payloads, levels=levels, seconds=seconds, engine=engine, log=log)
    return curves


class _Served:
    """Registers settings of one archive under temporary names, one name per registration."""

    def __init__(
        self,
        client: TorchServe,
        store: Path,
        archive: Path,
        name: str,
        *,
        public_key: Path | None,
        key_dir: Path | None,
        packaged: int,
    ) -> None:
        from torchship.archiver.names import MAX_NAME_LENGTH

        self.client, self.store, self.archive = client, Path(store), archive
        self.public_key, self.key_dir, self.packaged = public_key, key_dir, packaged
        self.max_length = MAX_NAME_LENGTH
        self.temp = f"tune-{name}"[:MAX_NAME_LENGTH]  # a name of its own, within the name rule
        self.registrations = 0

    def _next_name(self) -> str:
        """A new name for each registration: one that TorchServe failed to take down cannot spoil the next."""
        self.registrations += 1
        suffix = f"-{self.registrations}"
        return self.temp[: self.max_length - len(suffix)] + suffix

    @contextmanager
    def setting(self, workers: int, batch: int, delay: int, threads: int) -> Iterator[str]:
        """The archive registered with these settings (a signed, verified copy when `threads` differ from the
        packaged ones) under a new temporary name, ready; taken down and its copy removed afterwards."""
        from torchship.archiver import ensure_verified, public_key_path, signature_path

        copy = None
        if threads != self.packaged:
            if self.key_dir is None:
                raise BadInput(f"{threads} threads per worker need a signed copy of the archive: pass key_dir")
            copy = threads_copy(
                self.archive,
                threads,
                self.store,
                self.key_dir,
                name=self.temp,
                version=f"threads{threads}",
                public_key=self.public_key,
            )
            ensure_verified(copy, public_key=public_key_path(self.key_dir))
        temp = self._next_name()
        try:
            self.client.register(
                (copy or self.archive).name,
                model_name=temp,
                initial_workers=workers,
                batch_size=batch,
                max_batch_delay=delay,
            )
            try:
                self.client.wait_until_ready(temp, timeout=120)
                yield temp
            finally:
                unregister_after_load(self.client, temp)
        finally:
            if copy is not None:
                copy.unlink(missing_ok=True)
                signature_path(copy).unlink(missing_ok=True)
