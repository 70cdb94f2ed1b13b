"""The project's model keyring: the keys that wrap the data keys of encrypted archives.

`.torchship/keys/model-keys.json` beside the signing keys, made on first use (folder 0700, file
0600, written atomically and never over an existing one), or a keyring file the user names. Its
format is `torchship_crypto`'s: {"current": id, "keys": {id: base64 key}}. The current key wraps
new archives; older keys stay so that archives wrapped under them keep opening (see `rekey` for
rotation). Nothing here prints, logs or returns a key's bytes in a message: ids only.
"""

from __future__ import annotations

import base64
import binascii
import json
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
    "shown_key_id",
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
    if os.path.lexists(path):  # a link, dangling or not, is load_keyring's to refuse: never made over
        return path, False
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    kid = torchship_crypto.key_id()
    made = _write(path, torchship_crypto.keyring_text(kid, {kid: torchship_crypto.new_key()}), replace=False)
    return path, made


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """Read a keyring; ArchiveError with the reason (and the fix) when it cannot be used.

    Only a regular file of this account's, mode 0600, is read: a symbolic link (dangling or not) is
    refused, as rotation would replace the link and never the file it points to. The JSON may not name
    a key id twice, no key may be all zeros, and a value that fails validation is described, never
    shown (a key pasted into an id's place must not reach a terminal or a log)."""
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise ArchiveError(f"no model keyring at {path}") from None
    except OSError as exc:
        raise ArchiveError(f"cannot read the model keyring {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ArchiveError(_symlink_message(path))
    if not stat.S_ISREG(st.st_mode):
        raise ArchiveError(f"the model keyring {path} is not a file")
    if st.st_mode & 0o077:
        raise ArchiveError(
            f"the model keyring {path} can be read or written by other accounts (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:  # ELOOP: made a link since the lstat
        raise ArchiveError(f"cannot read the model keyring {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ArchiveError(f"the model keyring {path} is not a file")
        data = f.read()
    current, keys = _parse(path, data)
    return Keyring(path, current, keys)


_SHAPE = "{'current': id, 'keys': {id: base64 key}}"
_ID_RULE = "letters, digits, '_', '-' and '.', at most 64"


class _Duplicate(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in pairs:
        if name in out:
            raise _Duplicate(name)
        out[name] = value
    return out


def shown_key_id(name: object) -> str:
    """`name` itself when it has the key-id form, else a description that does not repeat it."""
    if isinstance(name, str) and KEY_ID.fullmatch(name):
        return name
    return "a value that is not a key id (" + _ID_RULE + "; is a key in an id's place?)"


def _parse(path: Path, data: bytes) -> tuple[str, dict[str, bytes]]:
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Duplicate as dup:
        raise ArchiveError(f"{path} names {shown_key_id(dup.name)} twice: a keyring names each key once") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ArchiveError(f"{path} is not a model keyring: not valid JSON{where}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), dict) or "current" not in raw:
        raise ArchiveError(f"{path} is not a model keyring ({_SHAPE})")
    texts = [t for t in raw["keys"].values() if isinstance(t, str)]
    leaked = set(texts)
    for text in texts:  # a key's bytes in hex (an id-shaped string) must not be shown either
        try:
            leaked.add(base64.b64decode(text, validate=True).hex())
        except (binascii.Error, ValueError):
            pass

    def shown(name: object) -> str:
        return shown_key_id(None) if name in leaked else shown_key_id(name)

    keys: dict[str, bytes] = {}
    for kid, text in raw["keys"].items():
        if not KEY_ID.fullmatch(kid) or kid in leaked:
            raise ArchiveError(f"{path}: a key is filed under {shown(kid)}: an id is {_ID_RULE}")
        try:
            key = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except (binascii.Error, ValueError):
            raise ArchiveError(f"{path}: key {kid!r} is not base64") from None
        if len(key) != torchship_crypto.KEY_BYTES:
            raise ArchiveError(f"{path}: key {kid!r} is not {torchship_crypto.KEY_BYTES} bytes of base64")
        if not any(key):
            raise ArchiveError(
                f"{path}: key {kid!r} is all zeros: not a key (make one with torchship keys rotate-model-key)"
            )
        keys[kid] = key
    current = raw["current"]
    if not isinstance(current, str) or not KEY_ID.fullmatch(current) or current in leaked:
        raise ArchiveError(f"{path}: its current key is {shown(current)}, not the id of one of its keys")
    if current not in keys:
        raise ArchiveError(f"{path}: the current key {current!r} is not in it")
    return current, keys


def _symlink_message(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    dangling = "" if os.path.exists(path) else ", which does not exist (a dangling link)"
    return (
        f"the model keyring {path} is a symbolic link (to {target}{dangling}): torchship reads and writes a "
        "keyring only as a regular file, as rotating through a link would replace the link, never the file "
        "it points to. Put the keyring itself there, or name the real file with --model-key FILE"
    )


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
        raise ArchiveError(
            f"no key {shown_key_id(kid)} in the model keyring {ring.path}; it holds {', '.join(sorted(ring.keys))}"
        )
    if kid == ring.current:
        raise ArchiveError(f"{kid} is the current model key: rotate first (torchship keys rotate-model-key)")
    keys = {k: v for k, v in ring.keys.items() if k != kid}
    _write(ring.path, torchship_crypto.keyring_text(ring.current, keys), replace=True)


def _write(path: Path, text: str, *, replace: bool) -> bool:
    """Write `text` to `path` atomically, mode 0600 from the start; without `replace`, never over an
    existing file (another process that made it first wins). Whether this call wrote it. Never through
    or over a symbolic link (ArchiveError): the link would be replaced, and the file it names left as it was."""
    if path.is_symlink():
        raise ArchiveError(_symlink_message(path))
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
