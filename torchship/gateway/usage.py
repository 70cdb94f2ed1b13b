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

__all__ = ["TenantUsage", "summarize", "NO_KEY", "UNKNOWN_KEY"]

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
                    tenant = str(entry.get("tenant") or "")
                    if not tenant:
                        tenant = NO_KEY if entry.get("key") == "none" else UNKNOWN_KEY
                    out.setdefault(tenant, TenantUsage()).add(status, str(entry.get("time", "")))
        except FileNotFoundError:
            continue
    return out
