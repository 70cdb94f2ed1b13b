"""Files the gateway writes: whole or not at all (a reader never sees half a config), private ones 0600.

nginx reads its config at every reload; a half-written file would be refused at best. Every file is
written beside its final name and renamed over it. A private file (a key, the tenant-key map, the
upstream token) is created 0600 before a byte is written, so no other account ever can read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["write_file", "locked", "private_mode_problem"]


def write_file(path: Path, data: str | bytes, *, private: bool = False) -> None:
    """Write `data` to `path` atomically; 0600 when `private`, else 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            if not private:
                os.fchmod(f.fileno(), 0o644)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the gateway folder's lock: one `keys create`, `keys revoke`, reload or start at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def private_mode_problem(path: Path) -> str | None:
    """Why `path` is not private to this account (readable by others, or not ours); None when it is."""
    st = path.stat()
    if st.st_uid != os.getuid():
        return f"{path} belongs to another account"
    if st.st_mode & 0o077:
        return f"{path} is readable or writable by other accounts (mode {st.st_mode & 0o777:o}): chmod 600 {path}"
    return None
