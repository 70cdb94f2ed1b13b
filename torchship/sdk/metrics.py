"""Prometheus text from TorchServe's metrics port, parsed into samples, with helpers per model.

TorchServe labels a request made without a version `model_version="default"`; helpers sum
over every version unless one is asked for.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["Sample", "Metrics", "parse_prometheus"]

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:\\.|[^"\\])*)"\s*,?')


@dataclass(frozen=True)
class Sample:
    """One sample of the metrics port: a metric name, its labels and its value."""

    name: str
    labels: dict[str, str] = field(hash=False)
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """Parse the Prometheus text exposition format (comments and blank lines skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name, raw_labels, raw_value = match.groups()
        labels = {k: _unescape(v) for k, v in _LABEL.findall(raw_labels or "")}
        try:
            value = float(raw_value)
        except ValueError:
            continue
        out.append(Sample(name, labels, value))
    return out


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


class Metrics:
    """A snapshot of the metrics port."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    @classmethod
    def from_text(cls, text: str) -> Metrics:
        """Parse the Prometheus text of the metrics port."""
        return cls(parse_prometheus(text))

    def select(self, name: str, **labels: str) -> list[Sample]:
        """Return the samples of metric `name` whose labels include `labels`."""
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def total(self, name: str, **labels: str) -> float:
        """Return the sum of the samples of metric `name` whose labels include `labels`."""
        return sum(s.value for s in self.select(name, **labels))

    def _model_labels(self, model: str, version: str | None) -> dict[str, str]:
        return {"model_name": model, **({"model_version": version} if version else {})}

    def requests(self, model: str, version: str | None = None) -> float:
        """Inference requests answered for a model (all versions unless one is given)."""
        return self.total("ts_inference_requests_total", **self._model_labels(model, version))

    def mean_latency_ms(self, model: str, version: str | None = None) -> float:
        """Mean time in the server per request, queue included (NaN before the first request)."""
        n = self.requests(model, version)
        total_us = self.total("ts_inference_latency_microseconds", **self._model_labels(model, version))
        return total_us / n / 1000 if n else math.nan

    def mean_queue_ms(self, model: str, version: str | None = None) -> float:
        """Mean time a request waited in the queue (NaN before the first request)."""
        n = self.requests(model, version)
        total_us = self.total("ts_queue_latency_microseconds", **self._model_labels(model, version))
        return total_us / n / 1000 if n else math.nan

    def models(self) -> list[str]:
        """Return the names of the models that have metrics, sorted."""
        return sorted({s.labels["model_name"] for s in self.samples if "model_name" in s.labels})
