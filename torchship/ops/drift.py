"""Drift: the last N captured requests of a model version against the reference its training recorded.

The reference is read from the archive (`model_store/NAME-VERSION.mar`): the checkpoint's meta.json
packed in it carries `reference`, each drift signal of the held-out data described as a histogram
(continuous) or as proportions (categorical) (handlers/torchship_signals.py). The archive is read as
a zip file, nothing of it is run; the same meta.json is in its signed provenance (`checkpoint`).

Per signal, over the values of the captured requests that were answered (status 200):

- categorical (predicted class, unknown user): the population stability index
  PSI = sum((live - ref) * ln(live / ref)) over the categories, each share smoothed with half a count
  so an empty category is finite. 0.1 is "watch", 0.2 "drift", the usual PSI bands. At the least
  window (MIN_RECORDS) the PSI of traffic like the held-out data is about (categories - 1) / n,
  0.045 for ten classes: the drift band is far above chance.
- continuous (features, lengths, intensities, scores): the two-sample Kolmogorov-Smirnov distance D,
  the largest gap between the live and reference cumulative shares at the reference's decile edges
  (a binned KS: a lower bound of D on the raw values, so it never alarms more than the exact test).
  Drift when D exceeds both 0.1 (a tenth of the traffic moved: smaller gaps are not worth an alert
  at any window) and the test's critical value at significance 0.001 split over the continuous
  signals of the model (Bonferroni: mlp tests 102 of them), c(a) * sqrt(1/n + 1/m) with
  c(a) = sqrt(-ln(a / 2) / 2): at 500 requests against 2,000 held-out rows that is 0.124, so a
  calm report stays calm in all but one check in a thousand. "watch": D over 0.05 and the critical
  value at 0.05. The PSI of the same bins is reported beside it.

A signal with fewer than MIN_VALUES live values (the top score of a recommender whose users are all
unknown) is "too few" and does not count. The report's verdict: drift when any signal drifts.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchship.handlers import torchship_signals
from torchship.handlers.torchship_drift import (  # the comparison, shared with the workers' drift metric
    MIN_RECORDS,
    SignalDrift,
    compare,
    compare_signal,
    finite,
    live_values,
)
from torchship.sdk.errors import BadInput

__all__ = [
    "MIN_RECORDS",
    "SignalDrift",
    "DriftReport",
    "read_reference",
    "read_input_data",
    "compare",
    "compare_signal",
    "live_values",
    "drift",
    "plot",
]

MAX_META_BYTES = 16 * 1024 * 1024
PLOT_SIGNALS = 12


@dataclass(frozen=True)
class DriftReport:
    """A version's drift report: the window, the reference it was held against, each signal, the verdict."""

    model: str
    version: str
    archive: str
    run: str | None
    records: int
    first: float | None
    last: float | None
    signals: list[SignalDrift]
    plot: str | None = None

    @property
    def drift(self) -> bool:
        """Whether any signal drifted."""
        return any(s.verdict == "drift" for s in self.signals)

    @property
    def drifted(self) -> list[str]:
        """The signals that drifted, the largest first (relative to their thresholds)."""
        return [s.signal for s in _by_severity(self.signals) if s.verdict == "drift"]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (the `--json` output)."""
        return {
            "model": self.model,
            "version": self.version,
            "drift": self.drift,
            "drifted": self.drifted,
            "watch": [s.signal for s in _by_severity(self.signals) if s.verdict == "watch"],
            "records": self.records,
            "first": self.first,
            "last": self.last,
            "archive": self.archive,
            "run": self.run,
            "plot": self.plot,
            "signals": [s.to_dict() for s in self.signals],
        }


def _by_severity(signals: list[SignalDrift]) -> list[SignalDrift]:
    return sorted(signals, key=lambda s: -(s.statistic or 0.0) / s.threshold if s.threshold else 0.0)


# ------------------------------------------------------------------ the reference


def read_reference(archive: Path) -> tuple[dict[str, Any], str | None]:
    """Return (the drift reference, the training run) of an archive, from its packed meta.json.

    A zip read: nothing of the archive runs. BadInput when the archive is missing or carries no reference."""
    if not archive.is_file():
        raise BadInput(f"no archive {archive}: drift compares with the reference packed in it")
    try:
        content = _member(archive, "meta.json")
        meta: Any = {} if content is None else json.loads(content)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadInput(f"{archive.name} is not a readable archive: {exc}") from None
    reference = meta.get("reference") if isinstance(meta, dict) else None
    if not isinstance(reference, dict) or not isinstance(reference.get("signals"), dict) or not reference["signals"]:
        raise BadInput(
            f"{archive.name} carries no drift reference (its checkpoint's meta.json has none): train the model "
            "again (torchship train NAME) and package that run"
        )
    return reference, meta.get("run")


def read_input_data(archive: Path, kind: str) -> Any:
    """Return what drift needs of the archive to derive signals from a recorded input, read as data.

    That is torchship_signals.INPUT_FILES' member for `kind` (the sentiment vocabulary); None when the
    kind needs nothing, or the member is missing or too large (then those records are left out)."""
    member = torchship_signals.INPUT_FILES.get(kind)
    if member is None:
        return None
    try:
        return torchship_signals.input_data(kind, _member(archive, member))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _member(archive: Path, name: str) -> bytes | None:
    """A top-level member of the archive, read as data (a zip read: nothing of the archive runs); None when
    it is missing or over MAX_META_BYTES. Raises what zipfile raises for an unreadable archive."""
    with zipfile.ZipFile(archive) as zf:
        info = next((i for i in zf.infolist() if i.filename == name), None)
        return zf.read(info) if info is not None and info.file_size <= MAX_META_BYTES else None


# ------------------------------------------------------------------ the comparison


def drift(
    capture_root: Path,
    archive: Path,
    name: str,
    version: str,
    *,
    window: int = 500,
    plot_path: Path | None = None,
    min_records: int = MIN_RECORDS,
) -> DriftReport:
    """Return the drift report of `name` `version`: its last `window` captured requests against `archive`'s reference.

    BadInput when fewer than `min_records` answered requests with signals were captured."""
    from torchship.ops.capture import records as captured

    if window < min_records:
        raise BadInput(f"a window of {window} requests is too small: drift needs at least {min_records}")
    reference, run = read_reference(archive)
    recs = captured(capture_root, name, version, last=window)
    judged, used = compare(reference, recs, read_input_data(archive, str(reference.get("kind", ""))))
    if used < min_records:
        raise BadInput(
            f"{used} captured request(s) of {name} {version} with drift signals"
            + (f" (of {len(recs)} captured)" if len(recs) != used else "")
            + f"; drift needs at least {min_records}: turn capture on (torchship capture {name} --sample F) "
            "and let traffic flow"
        )
    times = [t for t in (finite(r.get("time")) for r in recs) if t]
    report = DriftReport(
        name,
        version,
        str(archive),
        run,
        used,
        min(times) if times else None,
        max(times) if times else None,
        judged,
        str(plot_path) if plot_path else None,
    )
    if plot_path is not None:
        plot(report, plot_path)
    return report


# ------------------------------------------------------------------ the picture


def plot(report: DriftReport, path: Path) -> Path:
    """A PNG of reference against live shares, per signal (the PLOT_SIGNALS most drifted); returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in _by_severity(report.signals) if s.verdict != "too few"][:PLOT_SIGNALS]
    cols = min(3, max(len(shown), 1))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, s in zip(axes.flat, shown):
        x = np.arange(len(s.bins))
        ax.bar(x - 0.2, s.reference_share, width=0.4, label="reference (held out)", color="#4c72b0")
        ax.bar(x + 0.2, s.live_share, width=0.4, label="live", color="#dd8452")
        ax.set_xticks(x)
        ax.set_xticklabels(s.bins, rotation=60, ha="right", fontsize=6)
        ax.set_title(f"{s.signal}: {s.test} {s.statistic:.3g} (>{s.threshold:.3g}): {s.verdict}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    if shown:
        axes.flat[0].legend(fontsize=7)
    more = len(report.signals) - len(shown)
    fig.suptitle(
        f"{report.model} {report.version}: last {report.records} requests vs training reference: "
        + ("DRIFT" if report.drift else "calm")
        + (f" ({more} more signals in --json)" if more > 0 else ""),
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
