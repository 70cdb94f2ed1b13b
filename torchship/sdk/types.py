"""Typed results of the management API, built from TorchServe's JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Worker", "ModelDescription", "ModelSummary"]


@dataclass(frozen=True)
class Worker:
    """One worker process of a model version, as the management API describes it."""

    id: str
    status: str
    pid: int | None = None
    memory_usage: int | None = None
    start_time: str | None = None
    gpu: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Worker:
        """Build a worker from its entry in TorchServe's description."""
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status", "")),
            pid=data.get("pid"),
            memory_usage=data.get("memoryUsage"),
            start_time=data.get("startTime"),
            gpu=bool(data.get("gpu", False)),
        )

    @property
    def ready(self) -> bool:
        """Whether the worker is READY."""
        return self.status == "READY"


@dataclass(frozen=True)
class ModelDescription:
    """One version of a registered model, as `GET /models/{name}/{version}` describes it."""

    name: str
    version: str
    url: str
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay: int
    response_timeout: int | None
    workers: tuple[Worker, ...]
    is_default: bool = False
    pending_requests: int | None = None
    custom: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, is_default: bool = False) -> ModelDescription:
        """Build a description from TorchServe's JSON (`is_default`: whether this is the default version)."""
        queue = data.get("jobQueueStatus") or {}
        return cls(
            name=str(data.get("modelName", "")),
            version=str(data.get("modelVersion", "")),
            url=str(data.get("modelUrl", "")),
            min_workers=int(data.get("minWorkers", 0)),
            max_workers=int(data.get("maxWorkers", 0)),
            batch_size=int(data.get("batchSize", 1)),
            max_batch_delay=int(data.get("maxBatchDelay", 0)),
            response_timeout=data.get("responseTimeout"),
            workers=tuple(Worker.from_json(w) for w in data.get("workers") or ()),
            is_default=is_default,
            pending_requests=queue.get("pendingRequests"),
            custom=data.get("customizedMetadata"),
            raw=data,
        )

    @property
    def ready_workers(self) -> int:
        """How many workers are READY."""
        return sum(1 for w in self.workers if w.ready)

    @property
    def status(self) -> str:
        """READY when every wanted worker is up, else a short word for the state."""
        ready = self.ready_workers
        if self.min_workers == 0 and not self.workers:
            return "STOPPED"
        if ready >= max(self.min_workers, 1):
            return "READY"
        return "PARTIAL" if ready else "NOT READY"

    def to_dict(self) -> dict[str, Any]:
        """Return the description as plain data (for --json)."""
        return {
            "name": self.name,
            "version": self.version,
            "url": self.url,
            "default": self.is_default,
            "status": self.status,
            "min_workers": self.min_workers,
            "max_workers": self.max_workers,
            "batch_size": self.batch_size,
            "max_batch_delay": self.max_batch_delay,
            "response_timeout": self.response_timeout,
            "workers": [
                {"id": w.id, "status": w.status, "pid": w.pid, "memory_usage": w.memory_usage} for w in self.workers
            ],
        }


@dataclass(frozen=True)
class ModelSummary:
    """One entry of `GET /models`: a name and the URL of its default version."""

    name: str
    url: str
