"""The project's model keyring: the keys that wrap the data keys of encrypted archives.

`.torchship/keys/model-keys.json` beside the signing keys, made on first use (folder 0700, file
0600, written atomically and never over an existing one), or a keyring file the user names. Its
format is `torchship_crypto`'s: {"current": id, "keys": {id: base64 key}}. The current key wraps
new archives; older keys stay so that archives wrapped under them keep opening (see `rekey` for
rotation). Nothing here prints, logs or returns a key's bytes in a message: ids only.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from torchship.handlers import torchship_crypto

from .durable import fsync_dir
from .errors import ArchiveError

__all__ = [
    "KEYRING_NAME",
    "Keyring",
    "keyring_path",
    "ensure_keyring",
    "load_keyring",
    "rotate_keyring",
    "retire_key",
]

KEYRING_NAME = "model-keys.json"
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # what a keys member may name


@dataclass(frozen=True)
class Keyring:
    """A keyring read from `path`: the current key's id and every key by id (never shown)."""

    path: Path
    current: str
    keys: dict[str, bytes] = field(repr=False)

    @property
    def current_key(self) -> bytes:
        return self.keys[self.current]

    def __repr__(self) -> str:  # the dataclass repr would list the keys
        return f"Keyring({str(self.path)!r}, current={self.current!r}, ids={sorted(self.keys)})"


def keyring_path(key_dir: Path) -> Path:
    """Where the project's keyring lives in its key folder."""
    return Path(key_dir) / KEYRING_NAME


def ensure_keyring(key_dir: Path) -> tuple[Path, bool]:
    """The project's keyring in `key_dir`, made with one fresh key when missing; (path, made now)."""
    path = keyring_path(key_dir)
    if path.exists():
        return path, False
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    kid = torchship_crypto.key_id()
    made = _write(path, torchship_crypto.keyring_text(kid, {kid: torchship_crypto.new_key()}), replace=False)
    return path, made


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """Read a keyring; ArchiveError with the reason (and the fix) when it cannot be used."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ArchiveError(f"no model keyring at {path}") from None
    except OSError as exc:
        raise ArchiveError(f"cannot read the model keyring {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ArchiveError(f"the model keyring {path} is not a file")
    if mode & 0o077:
        raise ArchiveError(
            f"the model keyring {path} can be read or written by other accounts (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        current, keys = torchship_crypto.read_keyring(path)
    except torchship_crypto.ModelKeyError as exc:
        raise ArchiveError(str(exc)) from None
    bad = sorted(kid for kid in keys if not KEY_ID.fullmatch(kid))
    if bad:
        raise ArchiveError(f"{path}: key id {bad[0]!r} is not one (letters, digits, '_', '-' and '.', at most 64)")
    return Keyring(path, current, keys)


def rotate_keyring(path: Path) -> tuple[str, str]:
    """Add a fresh key to the keyring and make it the current one; the old keys stay. (old id, new id)."""
    ring = load_keyring(path)
    new = torchship_crypto.key_id(set(ring.keys))
    keys = {**ring.keys, new: torchship_crypto.new_key()}
    _write(ring.path, torchship_crypto.keyring_text(new, keys), replace=True)
    return ring.current, new


def retire_key(path: Path, kid: str) -> None:
    """Remove key `kid` from the keyring (never the current one; the caller checks that nothing uses it)."""
    ring = load_keyring(path)
    if kid not in ring.keys:
        raise ArchiveError(f"no key {kid} in the model keyring {ring.path}; it holds {', '.join(sorted(ring.keys))}")
    if kid == ring.current:
        raise ArchiveError(f"{kid} is the current model key: rotate first (torchship keys rotate-model-key)")
    keys = {k: v for k, v in ring.keys.items() if k != kid}
    _write(ring.path, torchship_crypto.keyring_text(ring.current, keys), replace=True)


def _write(path: Path, text: str, *, replace: bool) -> bool:
    """Write `text` to `path` atomically, mode 0600 from the start; without `replace`, never over an
    existing file (another process that made it first wins). Whether this call wrote it."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails when the file exists: no clobbering a keyring made meanwhile
            except FileExistsError:
                return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)
