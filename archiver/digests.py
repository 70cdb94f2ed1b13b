"""Digests recorded when a file is written, reused while the file is unchanged.

Training already reads its weights once when it writes them; it records their sha256 in a
sidecar `.torchship-digests.json` keyed by file name with the size, modification time, inode
and device (as git's index does). Packaging reuses a recorded digest only while size and mtime still match, and hashes
otherwise. Nothing trusts this cache for security: `torchship verify` always hashes every member,
so a file changed behind the cache's back yields an archive that is refused; and encrypting packaging
hashes the weights as it encrypts them and writes nothing when they are not the bytes whose recorded
sha256 their data key was derived from (a stale record never reuses a data key for other bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

SIDECAR = ".torchship-digests.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_digest(path: Path, sha256: str | None = None) -> str:
    """Hash `path` (unless given) and record the digest beside it; returns the digest."""
    path = Path(path)
    sha256 = sha256 or sha256_file(path)
    sidecar = path.parent / SIDECAR
    try:
        entries = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        entries = {}
    st = path.stat()
    entries[path.name] = {"sha256": sha256, **_stat_key(st)}
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(tmp, sidecar)
    return sha256


def recorded_digest(path: Path) -> str | None:
    """The recorded sha256 of `path` if the file is unchanged since it was recorded, else None."""
    path = Path(path)
    try:
        entry = json.loads((path.parent / SIDECAR).read_text())[path.name]
        st = path.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if all(entry.get(k) == v for k, v in _stat_key(st).items()):
        return entry.get("sha256")
    return None


def _stat_key(st: os.stat_result) -> dict[str, int]:
    # a copy (new inode) or any rewrite (new size or mtime) misses, as in git's index
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}
