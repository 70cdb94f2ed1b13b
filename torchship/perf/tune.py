"""`torchship tune`: the fastest serving settings of a model within a p99 latency budget.

A guided search, not a blind grid (users of other tools report days-long sweeps): coordinate
ascent over the settings that matter most on a small machine, each trial a short load test of
the model registered under a temporary name of its own (tune-NAME-1, tune-NAME-2, ...):

1. batch size (1, 4, 8, 16) at one worker and a 5 ms batch delay;
2. batch delay (1, 5, 10, 20 ms) at the best batch size (skipped for batch 1);
3. workers (1 .. max) at the best batching, each with that batch size and with it shared among
   the workers (batch / workers: the same requests in flight, in batches that overlap instead of
   one worker computing while the frontend waits);
4. torch threads per worker at the best batching: 2 and all the cores a worker can have
   (workers x threads <= cores), for one worker and for the best number of workers;
5. the two fastest trials within the budget are measured again, and decided on the mean of
   their runs (with the worse p99): one short run on a shared machine can be lucky.

The best trial is the highest throughput whose p99 meets the budget (when none does, the lowest
p99). Steps 1-3 run the archive as packaged (its model-config's `handler.threads`, one for the
examples); threads are part of the archive, so step 4 registers a temporary copy whose
model-config asks for more, built and signed with the project's key and verified like any archive
(nothing unverified reaches the server), and a winner with other threads than packaged says how to
repackage.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchship.perf.load import run_load
from torchship.sdk.errors import ModelNotFound, ServerError

if TYPE_CHECKING:
    from torchship.sdk.client import TorchServe

__all__ = ["Trial", "tune", "best_trial", "packaged_threads", "threads_copy", "thread_splits", "unregister_after_load"]


@dataclass(frozen=True)
class Trial:
    """One setting tried by `tune` (workers, batching, threads) and what its load test measured."""

    workers: int
    batch_size: int
    max_batch_delay: int
    threads: int
    throughput: float
    p50_ms: float
    p99_ms: float
    failed: int
    runs: int = 1

    def meets(self, slo_p99_ms: float) -> bool:
        """Whether the trial's p99 is within `slo_p99_ms` with no request failed."""
        return self.p99_ms <= slo_p99_ms and self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        """Return the trial as plain data."""
        return dict(self.__dict__)

    def again(self, other: Trial) -> Trial:
        """This trial measured once more: mean throughput and p50, the worse p99, all failures."""
        n = self.runs + 1
        return Trial(
            self.workers,
            self.batch_size,
            self.max_batch_delay,
            self.threads,
            round((self.throughput * self.runs + other.throughput) / n, 1),
            round((self.p50_ms * self.runs + other.p50_ms) / n, 2),
            max(self.p99_ms, other.p99_ms),
            self.failed + other.failed,
            n,
        )


def best_trial(trials: Sequence[Trial], slo_p99_ms: float) -> Trial:
    """Return the highest throughput that meets the budget, else the lowest p99."""
    good = [t for t in trials if t.meets(slo_p99_ms)]
    if good:
        return max(good, key=lambda t: t.throughput)
    return min(trials, key=lambda t: t.p99_ms)


def unregister_after_load(client: TorchServe, name: str, tries: int = 10) -> None:
    """Take a model that was just under heavy load off the server: its workers first, then its name.

    TorchServe 0.12 can fail a DELETE that meets workers still finishing their last batches (500,
    ConcurrentModificationException); when it does it has already dropped the version but not the name, and
    that stale name refuses later registrations under it. Scaling to zero first fails harmlessly when it
    fails (the version stays; wait and try again), and the DELETE then has no worker left to stop. Gone
    already is fine.
    """
    _until_done(lambda: client.scale(name, min_workers=0, max_workers=0, synchronous=True), tries)
    _until_done(lambda: client.unregister(name), tries)


def _until_done(call: Callable[[], object], tries: int) -> None:
    """Run a management call, trying again a second later while the server fails; not found is done."""
    for attempt in range(tries):
        try:
            call()
            return
        except ModelNotFound:
            return
        except ServerError:
            if attempt == tries - 1:
                raise
            time.sleep(1)


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

    `engine`: how each trial is loaded: "python" (the client's threads) or "wrk" (the first payload, by wrk:
    for tiny models the Python generator is the bottleneck). `cores`: what the server may use (default: the
    cores this process may run on; tune runs beside the server). `key_dir`: the project's signing keys, which
    sign the trial archives of step 4 (without it, step 4 is skipped): every archive a trial registers passes
    verification first.
    """
    from torchship.archiver import archive_path, ensure_verified, public_key_path, signature_path
    from torchship.archiver.names import MAX_NAME_LENGTH
    from torchship.perf.bench import wrk_load

    archive = archive_path(store, name, version)
    ensure_verified(archive, public_key=public_key)
    packaged = packaged_threads(archive)
    cores = cores or len(os.sched_getaffinity(0))
    temp = f"tune-{name}"[:MAX_NAME_LENGTH]  # a name of its own, within the name rule
    trials: dict[tuple[int, int, int, int], Trial] = {}
    registrations = 0

    def trial_name() -> str:
        """A new name for each registration: one that TorchServe failed to take down cannot spoil the next."""
        nonlocal registrations
        registrations += 1
        suffix = f"-{registrations}"
        return temp[: MAX_NAME_LENGTH - len(suffix)] + suffix

    def trial(workers: int, batch: int, delay: int, threads: int = packaged, again: bool = False) -> Trial:
        key = (workers, batch, delay, threads)
        if key in trials and not again:
            return trials[key]
        copy = None
        if threads != packaged:
            assert key_dir is not None, "step 4 needs the signing keys"
            copy = threads_copy(
                archive, threads, Path(store), key_dir, name=temp, version=f"threads{threads}", public_key=public_key
            )
            ensure_verified(copy, public_key=public_key_path(key_dir))
        served = trial_name()
        try:
            client.register(
                (copy or archive).name,
                model_name=served,
                initial_workers=workers,
                batch_size=batch,
                max_batch_delay=delay,
            )
            try:
                client.wait_until_ready(served, timeout=120)
                if warmup:
                    run_load(client, served, payloads, concurrency=concurrency, duration=warmup)
                if engine == "wrk":
                    w = wrk_load(client, served, payloads[0], version=None, concurrency=concurrency, seconds=seconds)
                    figures = (w["throughput_rps"], w["p50_ms"], w["p99_ms"], w["failed"])
                else:
                    load = run_load(client, served, payloads, concurrency=concurrency, duration=seconds)
                    figures = (load.throughput, load.p(50), load.p(99), load.failed)
            finally:
                unregister_after_load(client, served)
        finally:
            if copy is not None:
                copy.unlink(missing_ok=True)
                signature_path(copy).unlink(missing_ok=True)
        result = Trial(
            workers, batch, delay, threads, round(figures[0], 1), round(figures[1], 2), round(figures[2], 2), figures[3]
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
        best = best_trial([best] + [trial(1, best.batch_size, d) for d in (1, 5, 10, 20)], slo_p99_ms)
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
