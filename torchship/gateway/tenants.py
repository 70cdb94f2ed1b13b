"""Tenant API keys: who may call the gateway, for which models, at what rate.

`torchship keys create NAME [--models m1,m2] [--rate R/s]` makes a key (`tsk_` and 64 hex digits,
256 random bits) and prints it once. The gateway matches a caller's `Authorization: Bearer <key>`
against an nginx `map`, so the secret must exist in one file that nginx reads: `tenant-keys.conf`,
0600, written by torchship and read back by it (it is the only copy of each secret). Everything else
about a tenant (models, rate, created, the key's sha256 and a short id for listings) is in
`tenants.json`, which holds no secret. Hex, because nginx compares map strings ignoring case.

`owner` is the project's own key (all models, no rate limit): made at the first `serve start --tls`
and kept in `owner.key` (0600) for `TorchServe.from_config`, which reaches the gateway with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchship.archiver.names import check_name
from torchship.sdk.errors import BadInput, ConfigError

from .files import private_mode_problem, write_file

__all__ = ["OWNER", "Rate", "Tenant", "TenantStore", "check_tenant_name", "key_id"]

OWNER = "owner"
KEY_PREFIX = "tsk_"
_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# one line of tenant-keys.conf, exactly as render_tenant_keys writes it
_KEY_LINE = re.compile(r'^\s*"Bearer (tsk_[0-9a-f]{64})"\s+"([a-z0-9][a-z0-9_-]{0,62})";\s*$')


def check_tenant_name(name: str) -> str:
    """`name` when it is a valid tenant name (lower-case letters, digits, '_' and '-'); BadInput otherwise."""
    if not isinstance(name, str) or not _TENANT_NAME.fullmatch(name):
        raise BadInput(
            f"invalid tenant name {name!r}: lower-case letters, digits, '_' and '-', starting with a letter or "
            "digit, at most 63 characters"
        )
    return name


def key_id(secret: str) -> str:
    """A key's short public id: the first 12 hex digits of its sha256 (what listings and logs may show)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Rate:
    """A tenant's request rate as nginx's limit_req counts it: `count` per `unit` ("s" or "m"), and a burst.

    `burst` requests over the rate are let through at once (nginx `burst=N nodelay`), then each
    request beyond the rate is answered 429 with Retry-After.
    """

    count: int
    unit: str
    burst: int

    @classmethod
    def parse(cls, text: str, burst: int | None = None) -> Rate:
        """Read "10", "10/s", "600/m" or "0.5/s" (sent to nginx as 30r/m); burst defaults to one second's worth."""
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:r?/\s*(s|sec|second|m|min|minute))?\s*", text or "")
        if not m:
            raise BadInput(f"invalid rate {text!r}: e.g. 10/s, 600/m or 0.5/s")
        value, unit = float(m.group(1)), (m.group(2) or "s")[0]
        if unit == "s" and value != int(value):
            value, unit = value * 60, "m"
        count = round(value)
        if count < 1 or count != value or count > 100_000:
            raise BadInput(f"invalid rate {text!r}: between 1/m and 100000/s, a whole number per second or minute")
        if burst is None:
            burst = max(1, count) if unit == "s" else max(1, math.ceil(count / 60))
        if burst < 0 or burst > 100_000:
            raise BadInput(f"invalid burst {burst}: between 0 and 100000")
        return cls(count, unit, burst)

    @property
    def per_second(self) -> float:
        """Requests per second."""
        return self.count / (60.0 if self.unit == "m" else 1.0)

    @property
    def nginx(self) -> str:
        """The rate as limit_req_zone writes it (10r/s)."""
        return f"{self.count}r/{self.unit}"

    @property
    def retry_after(self) -> int:
        """Seconds until the rate lets the next request through: what a 429's Retry-After says."""
        return max(1, math.ceil(1 / self.per_second))

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}"

    def to_dict(self) -> dict[str, Any]:
        """Return the rate as plain data."""
        return {"rate": str(self), "burst": self.burst}


@dataclass(frozen=True)
class Tenant:
    """A tenant: its name, its key's public id and sha256, its models (None: all) and rate (None: unlimited)."""

    name: str
    key_id: str
    sha256: str
    models: tuple[str, ...] | None
    rate: Rate | None
    created: str

    def to_dict(self) -> dict[str, Any]:
        """Return the tenant as plain data (never the key)."""
        return {
            "name": self.name,
            "key_id": self.key_id,
            "sha256": self.sha256,
            "models": list(self.models) if self.models is not None else None,
            "rate": self.rate.to_dict() if self.rate else None,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Tenant:
        """Read a tenant as `to_dict` wrote it."""
        rate = raw.get("rate")
        return cls(
            check_tenant_name(raw["name"]),
            str(raw["key_id"]),
            str(raw["sha256"]),
            tuple(check_name(m) for m in raw["models"]) if raw.get("models") is not None else None,
            Rate.parse(rate["rate"], rate["burst"]) if rate else None,
            str(raw.get("created", "")),
        )


class TenantStore:
    """The tenants of one gateway folder: `tenants.json` (no secrets) and `tenant-keys.conf` (0600, the secrets).

    Changing them does not reach a running nginx by itself: `Gateway.reload()` does (the CLI calls it).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def meta_path(self) -> Path:
        """`tenants.json`: each tenant's models, rate, key id and sha256."""
        return self.folder / "tenants.json"

    @property
    def keys_path(self) -> Path:
        """`tenant-keys.conf`: the nginx map from each key to its tenant (0600)."""
        return self.folder / "tenant-keys.conf"

    @property
    def owner_key_path(self) -> Path:
        """`owner.key`: the project's own key, for `TorchServe.from_config` (0600)."""
        return self.folder / "owner.key"

    def all(self) -> list[Tenant]:
        """Every tenant, by name (the owner included once the gateway has started)."""
        if not self.meta_path.is_file():
            return []
        try:
            raw = json.loads(self.meta_path.read_text(encoding="utf-8"))
            return sorted((Tenant.from_dict(t) for t in raw["tenants"]), key=lambda t: t.name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read {self.meta_path}: {exc}") from None

    def get(self, name: str) -> Tenant | None:
        """The tenant called `name`, or None."""
        return next((t for t in self.all() if t.name == name), None)

    def secrets(self) -> dict[str, str]:
        """Each tenant's key, read back from tenant-keys.conf (refused unless that file is private)."""
        if not self.keys_path.is_file():
            return {}
        problem = private_mode_problem(self.keys_path)
        if problem:
            raise ConfigError(f"the tenant keys are not private: {problem}")
        out: dict[str, str] = {}
        for line in self.keys_path.read_text(encoding="utf-8").splitlines():
            m = _KEY_LINE.match(line)
            if m:
                out[m.group(2)] = m.group(1)
        return out

    def create(
        self, name: str, *, models: list[str] | None = None, rate: Rate | None = None, _owner: bool = False
    ) -> tuple[Tenant, str]:
        """Make a key for tenant `name`, limited to `models` (None: all) and `rate` (None: unlimited).

        Returns the tenant and its key: the only time the key is given out.
        """
        check_tenant_name(name)
        if name == OWNER and not _owner:
            raise BadInput(f"'{OWNER}' is the project's own key (made by serve start --tls): choose another name")
        if models is not None:
            models = sorted({check_name(m) for m in models})
            if not models:
                raise BadInput("--models names no model: leave it out to allow every model")
        if self.get(name) is not None:
            raise BadInput(f"tenant {name} has a key already: `torchship keys revoke {name}` first")
        secret = KEY_PREFIX + secrets.token_hex(32)
        tenant = Tenant(
            name,
            key_id(secret),
            hashlib.sha256(secret.encode()).hexdigest(),
            tuple(models) if models is not None else None,
            rate,
            dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        keys = self.secrets()
        keys[name] = secret
        self._write(self.all() + [tenant], keys)
        return tenant, secret

    def revoke(self, name: str) -> bool:
        """Remove tenant `name` and its key; False when there was none."""
        check_tenant_name(name)
        if name == OWNER:
            raise BadInput(f"'{OWNER}' is the project's own key: stop the gateway instead (torchship serve stop)")
        tenants = self.all()
        if not any(t.name == name for t in tenants):
            return False
        keys = self.secrets()
        keys.pop(name, None)
        self._write([t for t in tenants if t.name != name], keys)
        return True

    def owner_key(self) -> str:
        """The project's own key, made on first use."""
        secret = self.secrets().get(OWNER)
        if secret is None or self.get(OWNER) is None:
            tenants = [t for t in self.all() if t.name != OWNER]
            keys = {k: v for k, v in self.secrets().items() if k != OWNER}
            self._write(tenants, keys)
            _, secret = self.create(OWNER, _owner=True)
        if not self.owner_key_path.is_file() or self.owner_key_path.read_text(encoding="utf-8").strip() != secret:
            write_file(self.owner_key_path, secret + "\n", private=True)
        return secret

    def _write(self, tenants: list[Tenant], keys: dict[str, str]) -> None:
        from .nginx import render_tenant_keys

        names = {t.name for t in tenants}
        # the secrets first: a tenant listed without its key is refused (401), never let in
        write_file(self.keys_path, render_tenant_keys({n: s for n, s in keys.items() if n in names}), private=True)
        body = {"tenants": [t.to_dict() for t in sorted(tenants, key=lambda t: t.name)]}
        write_file(self.meta_path, json.dumps(body, indent=2) + "\n", private=True)
