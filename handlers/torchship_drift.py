"""Drift's comparison, one definition for `torchship drift` and for the workers' drift metric.

`compare` judges a version's captured records against the reference its training recorded (the method:
torchship.ops.drift's docstring). `DriftGauge` runs the same comparison inside a worker, on the
version's capture folder, every `drift_every_s` seconds of the capture settings, and emits the verdict
as metrics TorchServe serves on its metrics port (Prometheus text, `metrics_mode=prometheus` with
`model_metrics_auto_detect=true`), so an alert needs no torchship command:

    TorchshipDrift{ModelName, ModelVersion}        1 when any signal drifts, else 0
    TorchshipDriftScore{ModelName, ModelVersion}   the largest statistic / its drift threshold (>= 1: drift)
    TorchshipDriftRecords{ModelName, ModelVersion} the answered requests the verdict was drawn from

The comparison runs in a process of its own (at a lower priority), started from a thread: in a thread
of the worker, its CPU would hold the worker's GIL, and a request arriving meanwhile waits for it
at every step (a lone caller's p99 went from 3 ms to 30-120 ms). The next batch emits what it found
(metrics go out through the batch's context). Fewer than MIN_RECORDS answered requests: nothing is
emitted. numpy only: the worker imports this without torchship installed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:  # a worker imports each archive file as a top-level module
    import torchship_signals
except ModuleNotFoundError:  # torchship.handlers.torchship_drift: the drift command, the library
    from torchship.handlers import torchship_signals

logger = logging.getLogger(__name__)

MIN_RECORDS = 200  # captured answered requests a report needs
MIN_VALUES = 100  # live values a signal needs to be judged
PSI_DRIFT, PSI_WATCH = 0.2, 0.1
KS_DRIFT_MIN, KS_WATCH_MIN = 0.1, 0.05
KS_ALPHA_DRIFT, KS_ALPHA_WATCH = 0.001, 0.05


@dataclass(frozen=True)
class SignalDrift:
    """One signal's comparison: its test, statistic and thresholds, the verdict, and both distributions."""

    signal: str
    test: str  # "PSI" (categorical) or "KS" (continuous)
    statistic: float | None
    threshold: float
    watch: float
    verdict: str  # "drift", "watch", "calm" or "too few"
    live: int  # values in the window
    reference: int  # held-out values
    psi: float | None = None
    bins: list[str] = field(default_factory=list)
    reference_share: list[float] = field(default_factory=list)
    live_share: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the comparison as plain data."""
        return dict(self.__dict__)


# ------------------------------------------------------------------ the records


def read_records(folder: Path, last: int | None = None) -> list[dict[str, Any]]:
    """A version's captured records (its folder's capture-*.jsonl) in time order, the `last` N when given;
    a torn line is skipped.

    With `last`, files are read newest first, each from its end and only its last N lines (a file is one
    worker's, in time order: its older lines cannot be among the last N), and a file last written before
    the N-th newest record found so far is not read at all: a measurement reads about N records, not the
    version's whole capture."""
    files = []
    for path in Path(folder).glob("capture-*.jsonl"):
        try:
            files.append((path.stat().st_mtime, path))
        except OSError:
            continue  # removed by a worker's rotation meanwhile
    out: list[dict[str, Any]] = []
    for mtime, path in sorted(files, key=lambda f: f[0], reverse=True):
        if last and len(out) >= last and mtime < _time(sorted(out, key=_time)[-last]):
            break
        try:
            lines = _tail(path, last) if last else path.read_bytes().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # torn, or anyone's crafted line (a record is a file's)
                continue
            if isinstance(record, dict):
                out.append(record)
    out.sort(key=_time)
    return out[-last:] if last else out


def _tail(path: Path, n: int, block: int = 1 << 16) -> list[bytes]:
    """The last `n` lines of a file, read from its end a block at a time."""
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        data, start = b"", end
        newlines = 0
        while start > 0 and newlines <= n:
            begin = max(0, start - block)
            f.seek(begin)
            chunk = f.read(start - begin)
            data, start = chunk + data, begin
            newlines += chunk.count(b"\n")
    lines = data.splitlines()
    if start > 0:
        lines = lines[1:]  # the first is cut where the read began
    return lines[-n:]


def _time(record: dict[str, Any]) -> float:
    return finite(record.get("time")) or 0.0


def finite(value: Any) -> float | None:
    """A number as a finite float; None for anything else (a string, NaN, an int no float holds)."""
    if not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# ------------------------------------------------------------------ the comparison


def live_values(kind: str, records: list[dict[str, Any]], data: Any = None) -> tuple[dict[str, list[Any]], int]:
    """Return each signal's values over the answered records, and how many records that is.

    The values are the handler's signals, or those `torchship_signals.from_input` derives from the
    recorded input (with `data`, its `input_data` of the archive), and the answer's predictions
    (torchship_signals.predictions)."""
    values: dict[str, list[Any]] = {}
    used = 0
    for r in records:
        if r.get("status") != 200:
            continue
        try:  # a record is anyone's to write: one drift cannot read is left out, not the measurement
            found = _record_values(kind, r, data)
        except Exception:  # noqa: BLE001
            continue
        if found:
            used += 1
            for name, vs in found.items():
                values.setdefault(name, []).extend(vs)
    return values, used


def _record_values(kind: str, record: dict[str, Any], data: Any) -> dict[str, list[Any]]:
    """One answered record's signal values: its input's (those the handler recorded, or derived from the
    recorded input) and its answer's predictions; none when its input's cannot be had (a redacted input,
    a handler that records none), so every signal is judged on the same requests. Only category names
    (strings, booleans) and finite numbers are kept."""
    signals = record.get("signals")
    if signals == "input":  # the handler left them in the input (signals_from_input)
        signals = torchship_signals.from_input(kind, record.get("input"), data)
    if not isinstance(signals, dict):
        return {}
    found: dict[str, list[Any]] = {}
    for name, vs in [*signals.items(), *torchship_signals.predictions(kind, record.get("answer")).items()]:
        if isinstance(name, str) and isinstance(vs, list):
            kept = [v if isinstance(v, (str, bool)) else finite(v) for v in vs]
            found[name] = [v for v in kept if v is not None]
    return found


def _smoothed(counts: np.ndarray) -> np.ndarray:
    return (counts + 0.5) / (counts.sum() + 0.5 * len(counts))


def _psi(ref_counts: np.ndarray, live_counts: np.ndarray) -> float:
    p, q = _smoothed(ref_counts), _smoothed(live_counts)
    return float(np.sum((q - p) * np.log(q / p)))


def _critical(alpha: float, n: int, m: int) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt(1 / n + 1 / max(m, 1))


def _bin_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all"]
    return [f"<={edges[0]:g}"] + [f"{a:g}..{b:g}" for a, b in zip(edges, edges[1:])] + [f">{edges[-1]:g}"]


def compare_signal(name: str, ref: dict[str, Any], values: list[Any], continuous_signals: int) -> SignalDrift:
    """One signal's live values against its reference description."""
    m = int(ref.get("n") or 0)
    ref_share = np.asarray(ref["proportions"], dtype=np.float64)
    if ref.get("type") == "categorical":
        cats = [str(c) for c in ref["categories"]]
        names = [torchship_signals.category(v) for v in values]
        other = sum(1 for v in names if v not in cats)
        live_counts = np.array([names.count(c) for c in cats] + ([other] if other else []), dtype=np.float64)
        ref_counts = np.append(ref_share * m, [0.0] * (1 if other else 0))
        bins = cats + (["(other)"] if other else [])
        n = len(names)
        stat = _psi(ref_counts, live_counts) if n >= MIN_VALUES else None
        verdict = _verdict(stat, PSI_DRIFT, PSI_WATCH)
        return SignalDrift(
            name,
            "PSI",
            None if stat is None else round(stat, 4),
            PSI_DRIFT,
            PSI_WATCH,
            verdict,
            n,
            m,
            None if stat is None else round(stat, 4),
            bins,
            [round(float(x), 4) for x in ref_counts / max(m, 1)],
            [round(float(x), 4) for x in live_counts / max(n, 1)],
        )
    edges = [float(e) for e in ref["edges"]]
    numbers = [v for v in map(finite, values) if v is not None]
    n = len(numbers)
    live_counts = torchship_signals.histogram(numbers, edges).astype(np.float64)
    k = max(continuous_signals, 1)
    drift_at = max(KS_DRIFT_MIN, _critical(KS_ALPHA_DRIFT / k, max(n, 1), m))
    watch_at = max(KS_WATCH_MIN, _critical(KS_ALPHA_WATCH / k, max(n, 1), m))
    stat = psi = None
    if n >= MIN_VALUES:
        gaps = np.cumsum(ref_share)[:-1] - np.cumsum(live_counts / n)[:-1]
        stat = float(np.abs(gaps).max()) if len(gaps) else 0.0
        psi = _psi(ref_share * m, live_counts)
    return SignalDrift(
        name,
        "KS",
        None if stat is None else round(stat, 4),
        round(drift_at, 4),
        round(watch_at, 4),
        _verdict(stat, drift_at, watch_at),
        n,
        m,
        None if psi is None else round(psi, 4),
        _bin_labels(edges),
        [round(float(x), 4) for x in ref_share],
        [round(float(x), 4) for x in live_counts / max(n, 1)],
    )


def _verdict(stat: float | None, drift_at: float, watch_at: float) -> str:
    if stat is None:
        return "too few"
    return "drift" if stat > drift_at else "watch" if stat > watch_at else "calm"


def compare(
    reference: dict[str, Any], records: list[dict[str, Any]], data: Any = None
) -> tuple[list[SignalDrift], int]:
    """(each reference signal judged on the records, how many records were used); `data`: see live_values."""
    kind = str(reference.get("kind", ""))
    values, used = live_values(kind, records, data)
    signals = reference["signals"]
    continuous = sum(1 for s in signals.values() if s.get("type") != "categorical")
    return [compare_signal(name, ref, values.get(name, []), continuous) for name, ref in signals.items()], used


def score(judged: list[SignalDrift]) -> float:
    """The largest statistic relative to its drift threshold over the judged signals (>= 1 is drift)."""
    return max(
        ((s.statistic or 0.0) / s.threshold for s in judged if s.threshold and s.statistic is not None), default=0.0
    )


# ------------------------------------------------------------------ inside a worker

GAUGES = ("TorchshipDrift", "TorchshipDriftScore", "TorchshipDriftRecords")


# What the child process of DriftGauge.measure_apart runs: the job (folder, window, reference, the model's
# folder) on stdin, the figures as JSON on stdout.
_CHILD = (
    "import json, os, sys; os.nice(10); job = json.load(sys.stdin); sys.path.insert(0, job['path']); "
    "import torchship_drift as d; "
    "g = d.DriftGauge(job['folder'], job['reference'], '', '', job['model_dir']); "
    "print(json.dumps(g.measure(job['window'])))"
)


class DriftGauge:
    """A worker's drift metric of one version: compares its capture with the reference every `every_s`
    seconds in a process of its own (started and waited on from a thread), and hands the figures to the
    next batch to emit."""

    def __init__(
        self, folder: Path, reference: dict[str, Any], model: str, version: str, model_dir: Path | None = None
    ) -> None:
        self.folder, self.reference, self.model, self.version = Path(folder), reference, model, version
        self.model_dir = None if model_dir is None else str(model_dir)  # where the archive's files are
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None
        self._found: tuple[float, tuple[int, float, int]] | None = None  # (when, (drift, score, records))
        self._failed = False

    def tick(self, context: Any, every_s: float, window: int) -> None:
        """Emit what the last comparison found, unless a newer one is due (no stale verdict goes out);
        start the next comparison when `every_s` has passed since the last began. Never raises."""
        try:
            now = time.monotonic()
            found, self._found = self._found, None
            if found is not None and now - found[0] < every_s:
                self._emit(context, *found[1])
            busy = self._thread is not None and self._thread.is_alive()
            if every_s > 0 and not busy and now - self._last >= every_s:
                self._last = now
                self._thread = threading.Thread(
                    target=self._measure, args=(window,), name="torchship-drift", daemon=True
                )
                self._thread.start()
        except Exception as exc:  # noqa: BLE001 - the metric must never fail a request
            self._warn_once(exc)

    def measure(self, window: int) -> tuple[int, float, int] | None:
        """(drift 0/1, score, records) of the last `window` captured requests; None under MIN_RECORDS."""
        judged, used = compare(self.reference, read_records(self.folder, last=window), self.input_data())
        if used < MIN_RECORDS:
            return None
        return int(any(s.verdict == "drift" for s in judged)), round(score(judged), 4), used

    def input_data(self) -> Any:
        """torchship_signals.input_data of the model's folder (the sentiment vocabulary), read when measured."""
        kind = str(self.reference.get("kind", ""))
        name = torchship_signals.INPUT_FILES.get(kind)
        if name is None or self.model_dir is None:
            return None
        path = Path(self.model_dir) / name
        return torchship_signals.input_data(kind, path.read_bytes() if path.is_file() else None)

    def measure_apart(self, window: int, timeout: float = 120.0) -> tuple[int, float, int] | None:
        """`measure` in a child process at a lower priority (nice 10), which reads the capture itself: none
        of its CPU is spent holding this worker's GIL. The model keys are not handed down."""
        job = {"path": str(Path(__file__).resolve().parent), "folder": str(self.folder), "window": window}
        job["reference"], job["model_dir"] = self.reference, self.model_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHSHIP_MODEL_KEYS")}
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(job).encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(f"the drift process exited with {proc.returncode}: {lines[-1] if lines else ''}")
        found = json.loads(proc.stdout)
        return None if found is None else (int(found[0]), float(found[1]), int(found[2]))

    def _measure(self, window: int) -> None:
        try:
            found = self.measure_apart(window)
            if found is not None:
                self._found = (time.monotonic(), found)
        except Exception as exc:  # noqa: BLE001
            self._warn_once(exc)

    def _emit(self, context: Any, drift: int, value: float, records: int) -> None:
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        dims = [Dimension("ModelVersion", self.version)]
        for name, v, unit in zip(GAUGES, (drift, value, records), ("count", "ratio", "count")):
            context.metrics.add_metric(name, v, unit, dimensions=list(dims), metric_type=MetricTypes.GAUGE)

    def _warn_once(self, exc: Exception) -> None:
        if not self._failed:
            logger.warning("the drift metric of %s %s failed: %s", self.model, self.version, exc)
        self._failed = True
