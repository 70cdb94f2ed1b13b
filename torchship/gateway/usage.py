"""Requests and errors per tenant, read from the gateway's JSON access log.

nginx writes one JSON line per request (`log_format torchship` in nginx.py): the tenant its key
names ("" when the key was missing or unknown), the status, the path and the times. `summarize`
counts them per tenant; `torchship keys list` shows the counts beside each key. A request without a
key is counted under "(no key)", one with a key nobody holds under "(unknown key)".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TenantUsage", "summarize", "Tally", "NO_KEY", "UNKNOWN_KEY"]

NO_KEY = "(no key)"
UNKNOWN_KEY = "(unknown key)"


@dataclass
class TenantUsage:
    """One tenant's requests: how many, how many answered 2xx, 4xx (of them 429) and 5xx, and the last one's time."""

    requests: int = 0
    ok: int = 0
    client_errors: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    last: str = ""
    by_status: dict[int, int] = field(default_factory=dict)

    def add(self, status: int, time: str) -> None:
        """Count one request."""
        self.requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if 200 <= status < 400:
            self.ok += 1
        elif status >= 500:
            self.server_errors += 1
        else:
            self.client_errors += 1
            self.rate_limited += status == 429
        self.last = max(self.last, time)

    def to_dict(self) -> dict[str, Any]:
        """Return the counts as plain data."""
        return {
            "requests": self.requests,
            "ok": self.ok,
            "client_errors": self.client_errors,
            "rate_limited": self.rate_limited,
            "server_errors": self.server_errors,
            "last": self.last or None,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
        }


def _tenant(entry: dict[str, Any]) -> str:
    tenant = str(entry.get("tenant") or "")
    if not tenant:
        tenant = NO_KEY if entry.get("key") == "none" else UNKNOWN_KEY
    return tenant


class Tally:
    """Requests per tenant and status, read from the access log as it grows.

    The keeper's, every second, for the gateway's metrics listener: counters since the keeper started, in
    Prometheus text. Only what was appended since the last read is read; a log that was rotated (another
    inode, or shorter) is read from its start."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.counts: dict[tuple[str, int], int] = {}
        self.seconds: dict[str, float] = {}
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""

    def update(self) -> int:
        """Read what was appended; return how many requests that was."""
        try:
            st = self.log.stat()
        except FileNotFoundError:
            return 0
        if st.st_ino != self._inode or st.st_size < self._offset:
            self._inode, self._offset, self._partial = st.st_ino, 0, b""
        if st.st_size == self._offset:
            return 0
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            data = self._partial + f.read(st.st_size - self._offset)
        self._offset = st.st_size
        *lines, self._partial = data.split(b"\n")  # a line nginx is still writing waits for the next read
        n = 0
        for line in lines:
            try:
                entry = json.loads(line)
                status = int(entry["status"])
                took = float(entry.get("request_time") or 0.0)
            except (ValueError, KeyError, TypeError):
                continue
            if _mirrored(entry):
                continue
            tenant = _tenant(entry)
            self.counts[(tenant, status)] = self.counts.get((tenant, status), 0) + 1
            self.seconds[tenant] = self.seconds.get(tenant, 0.0) + took
            n += 1
        return n

    def prometheus(self) -> str:
        """The counters as Prometheus text (exposition format 0.0.4)."""
        out = [
            "# HELP torchship_gateway_requests_total Requests through the gateway, per tenant and status.",
            "# TYPE torchship_gateway_requests_total counter",
        ]
        for (tenant, status), n in sorted(self.counts.items()):
            out.append(f'torchship_gateway_requests_total{{tenant="{_label(tenant)}",status="{status}"}} {n}')
        out += [
            "# HELP torchship_gateway_request_seconds_total Time the gateway spent on each tenant's requests.",
            "# TYPE torchship_gateway_request_seconds_total counter",
        ]
        for tenant, took in sorted(self.seconds.items()):
            out.append(f'torchship_gateway_request_seconds_total{{tenant="{_label(tenant)}"}} {took:.3f}')
        return "\n".join(out) + "\n"


def _mirrored(entry: dict[str, Any]) -> bool:
    """A live rollout's mirrored request (logged for the rollout's figures): no caller made it."""
    return str(entry.get("path", "")) == "/_torchship_shadow"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def summarize(logs: Iterable[Path]) -> dict[str, TenantUsage]:
    """Count the requests of each tenant in these access logs (missing files count nothing)."""
    out: dict[str, TenantUsage] = {}
    for path in logs:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        status = int(entry["status"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a crash, or not ours
                    if _mirrored(entry):
                        continue
                    out.setdefault(_tenant(entry), TenantUsage()).add(status, str(entry.get("time", "")))
        except FileNotFoundError:
            continue
    return out
