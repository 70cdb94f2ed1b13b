"""The local registry: every archive built (with its lineage) and every deployment event.

SQLite in `.torchship/registry.db`. Each write is one transaction, so a crash mid-operation
leaves either the whole entry or nothing; WAL mode lets a reader (`torchship history`) run
while a rollout writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torchship.archiver.names import check_name_version

__all__ = ["Registry", "ArchiveRecord", "Event", "EVENT_KINDS"]

EVENT_KINDS = (
    "packaged",
    "rekeyed",
    "registered",
    "unregistered",
    "scaled",
    "default_set",
    "promoted",
    "rolled_back",
    "rollout_started",
    "rollout_passed",
    "rollout_failed",
    "rollout_interrupted",
    "live_split",
    "live_judged",
    "apply_started",
    "apply_finished",
    "apply_failed",
    "capture",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS archives (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    signature TEXT,
    path TEXT NOT NULL,
    checkpoint_run TEXT,
    data_fingerprint TEXT,
    git_commit TEXT,
    metrics TEXT,
    provenance TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_name ON events (name, id);
"""


@dataclass(frozen=True)
class ArchiveRecord:
    """A built archive as the registry keeps it: digest, signature, path and lineage."""

    name: str
    version: str
    digest: str
    signature: str | None
    path: str
    checkpoint_run: str | None
    data_fingerprint: str | None
    git_commit: str | None
    metrics: dict[str, Any]
    created: str

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain data."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Event:
    """One deployment event of a model (registered, promoted, rolled back, ...) with its details."""

    id: int
    time: str
    name: str
    version: str | None
    kind: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return the event as plain data."""
        return dict(self.__dict__)


_INSERT_EVENT = "INSERT INTO events (time, name, version, kind, detail) VALUES (?,?,?,?,?)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Registry:
    """The project's registry of archives and deployment events, in one SQLite file.

    Args:
        path: the database file (created, with its folder, when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self, *statements: tuple[str, tuple[Any, ...]]) -> int:
        """Run the statements as one transaction: all of them are written, or none."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    cur.execute(sql, args)
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # an interrupt right after COMMIT has nothing to undo
                    cur.execute("ROLLBACK")
                raise
            return cur.lastrowid or 0  # an int once a statement ran

    # ------------------------------------------------------------------ archives

    def record_archive(
        self,
        *,
        name: str,
        version: str,
        digest: str,
        path: Path,
        provenance: dict[str, Any],
        signature: Path | None = None,
    ) -> ArchiveRecord:
        """Record a built archive (replacing the record of a rebuilt one) and a 'packaged' event."""
        check_name_version(name, version)
        ck = provenance.get("checkpoint") or {}
        record = ArchiveRecord(
            name,
            version,
            digest,
            str(signature) if signature else None,
            str(path),
            ck.get("run"),
            (ck.get("data") or {}).get("fingerprint"),
            ck.get("git_commit"),
            ck.get("metrics") or {},
            _now(),
        )
        self._transaction(
            (
                "INSERT OR REPLACE INTO archives VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    name,
                    version,
                    digest,
                    record.signature,
                    record.path,
                    record.checkpoint_run,
                    record.data_fingerprint,
                    record.git_commit,
                    json.dumps(record.metrics),
                    json.dumps(provenance, sort_keys=True),
                    record.created,
                ),
            ),
            (_INSERT_EVENT, (record.created, name, version, "packaged", json.dumps({"digest": digest}))),
        )
        return record

    def record_rekey(
        self,
        name: str,
        version: str,
        *,
        digest: str,
        provenance: dict[str, Any],
        from_keys: list[str],
        to_key: str,
    ) -> None:
        """Record a recorded archive rewrapped under another model key, and a 'rekeyed' event.

        Its new build digest and provenance replace the old ones; lineage and creation time stay.
        """
        check_name_version(name, version)
        now = _now()
        detail = {"digest": digest, "from_keys": from_keys, "to_key": to_key}
        self._transaction(
            (
                "UPDATE archives SET digest=?, provenance=? WHERE name=? AND version=?",
                (digest, json.dumps(provenance, sort_keys=True), name, version),
            ),
            (_INSERT_EVENT, (now, name, version, "rekeyed", json.dumps(detail, sort_keys=True))),
        )

    def archive(self, name: str, version: str) -> ArchiveRecord | None:
        """Return the record of one archive, or None when it was never recorded."""
        row = self._conn.execute(
            "SELECT name, version, digest, signature, path, checkpoint_run, data_fingerprint, git_commit, metrics,"
            " created FROM archives WHERE name=? AND version=?",
            (name, version),
        ).fetchone()
        return _archive(row) if row else None

    def archives(self, name: str) -> list[ArchiveRecord]:
        """Return every recorded archive of a model, newest first."""
        rows = self._conn.execute(
            "SELECT name, version, digest, signature, path, checkpoint_run, data_fingerprint, git_commit, metrics,"
            " created FROM archives WHERE name=? ORDER BY created DESC",
            (name,),
        ).fetchall()
        return [_archive(r) for r in rows]

    def provenance(self, name: str, version: str) -> dict[str, Any] | None:
        """Return the provenance recorded with an archive, or None when it was never recorded."""
        row = self._conn.execute(
            "SELECT provenance FROM archives WHERE name=? AND version=?", (name, version)
        ).fetchone()
        return json.loads(row[0]) if row else None

    # ------------------------------------------------------------------ events

    def record(self, name: str, version: str | None, kind: str, **detail: Any) -> int:
        """Record an event of a model version (one of EVENT_KINDS, details as keywords); its id."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        check_name_version(name, version)  # the registry holds only names every command can address
        return self._transaction(
            (_INSERT_EVENT, (_now(), name, version, kind, json.dumps(detail, default=str, sort_keys=True)))
        )

    def events(self, name: str, *, kinds: tuple[str, ...] | None = None, limit: int | None = None) -> list[Event]:
        """Events of a model, newest first."""
        sql = "SELECT id, time, name, version, kind, detail FROM events WHERE name=?"
        args: list[Any] = [name]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        sql += " ORDER BY id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Event(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in self._conn.execute(sql, args)]

    def previous_default(self, name: str, current: str | None) -> str | None:
        """Return the version a rollback goes to, or None.

        That is the last version, other than `current`, that was made the default and never rolled
        back from.
        """
        events = self.events(name, kinds=("default_set", "promoted", "rolled_back"))
        bad = {e.detail.get("from") for e in events if e.kind == "rolled_back"}
        for event in events:
            if event.version and event.version != current and event.version not in bad:
                return event.version
        return None


def _archive(row: tuple[Any, ...]) -> ArchiveRecord:
    return ArchiveRecord(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], json.loads(row[8] or "{}"), row[9]
    )
