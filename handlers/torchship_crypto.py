"""Model weights encrypted at rest: the format, and the one place that encrypts and decrypts it.

An encrypted member (`<name>.tsenc`, e.g. `model.safetensors.tsenc`) is the weights file cut into
chunks, each sealed with AES-256-GCM under a data key of its own archive:

    b"TSENC1\\n" | header length (4 bytes, big-endian) | header (JSON) | chunk 0 | chunk 1 | ...

The header names the cipher, the chunk size, the plaintext's size and name; each chunk is its
ciphertext and 16-byte tag. Chunk i's nonce is i (96 bits, big-endian): unique under its data
key, so drawing nothing keeps builds reproducible. Its associated data is the header, i, and
whether it is the last chunk, so chunks cannot be moved, dropped, added or cut short, and the
header cannot change without every chunk failing.

The data key is derived from the project's model key, the archive's name and version and the
plaintext's sha256 (HMAC-SHA256): fresh for every archive and every checkpoint, the same for the
same key and checkpoint (a rebuild is byte-identical). It travels in the archive wrapped by the
model key (AES key wrap, RFC 3394) in `torchship-keys.json`, beside the key's id: rotating the
model key rewraps it there and leaves the encrypted weights as they are.

Model keys live in a keyring file (mode 0600, never in an archive, never in a log):
    {"current": "<id>", "keys": {"<id>": "<32 bytes, base64>", ...}}
The workers of a server torchship starts find it through $TORCHSHIP_MODEL_KEYS.

This file is packed into encrypted archives and imported flat in the worker, like the handler base:
it imports nothing of torchship's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

MAGIC = b"TSENC1\n"
SUFFIX = ".tsenc"
KEYS_MEMBER = "torchship-keys.json"
KEYRING_ENV = "TORCHSHIP_MODEL_KEYS"
CIPHER = "AES-256-GCM"
CHUNK = 4 << 20
TAG = 16
KEY_BYTES = 32
MAX_HEADER = 4096


class ModelKeyError(Exception):
    """The model key is missing or wrong, or an encrypted member is damaged: one clear line."""


# ------------------------------------------------------------------ keys


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def key_id(keyring_ids: set[str] | None = None) -> str:
    """A fresh key id (random: it says nothing of the key)."""
    while True:
        candidate = "mk-" + os.urandom(4).hex()
        if not keyring_ids or candidate not in keyring_ids:
            return candidate


def read_keyring(path: str | os.PathLike[str]) -> tuple[str, dict[str, bytes]]:
    """(current id, {id: key}) from a keyring file; ModelKeyError with the reason otherwise."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelKeyError(f"no model keyring at {path}") from None
    except (OSError, ValueError) as exc:
        raise ModelKeyError(f"cannot read the model keyring {path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), dict) or not isinstance(raw.get("current"), str):
        raise ModelKeyError(f"{path} is not a model keyring ({{'current': id, 'keys': {{id: key}}}})")
    keys = {}
    for kid, text in raw["keys"].items():
        try:
            key = base64.b64decode(text, validate=True)
        except (ValueError, TypeError):
            raise ModelKeyError(f"{path}: key {kid!r} is not base64") from None
        if len(key) != KEY_BYTES:
            raise ModelKeyError(f"{path}: key {kid!r} is {len(key)} bytes, not {KEY_BYTES}")
        keys[str(kid)] = key
    if raw["current"] not in keys:
        raise ModelKeyError(f"{path}: the current key {raw['current']!r} is not in it")
    return raw["current"], keys


def keyring_text(current: str, keys: dict[str, bytes]) -> str:
    return (
        json.dumps(
            {"current": current, "keys": {k: base64.b64encode(v).decode() for k, v in sorted(keys.items())}},
            indent=2,
        )
        + "\n"
    )


def data_key(model_key: bytes, archive_id: str, plaintext_sha256: str) -> bytes:
    """The data key of one archive's member: fresh per archive and checkpoint, reproducible."""
    message = b"torchship data key v1\0" + archive_id.encode() + b"\0" + plaintext_sha256.encode()
    return hmac.new(model_key, message, hashlib.sha256).digest()


def wrap(model_key: bytes, key: bytes) -> str:
    return base64.b64encode(aes_key_wrap(model_key, key)).decode()


def unwrap(model_key: bytes, wrapped: str) -> bytes:
    try:
        return aes_key_unwrap(model_key, base64.b64decode(wrapped, validate=True))
    except (InvalidUnwrap, ValueError) as exc:
        raise ModelKeyError(f"the model key does not open this archive's data key ({exc.__class__.__name__})") from None


# ------------------------------------------------------------------ the format


def _header_bytes(plaintext_name: str, size: int, chunk: int) -> bytes:
    header = {"cipher": CIPHER, "chunk_size": chunk, "format": 1, "plaintext": plaintext_name, "size": size}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">QB", index, 1 if last else 0)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def chunk_count(size: int, chunk: int) -> int:
    return max(1, -(-size // chunk))


def encrypted_size(size: int, chunk: int = CHUNK, plaintext_name: str = "model.safetensors") -> int:
    header = _header_bytes(plaintext_name, size, chunk)
    return len(MAGIC) + 4 + len(header) + size + chunk_count(size, chunk) * TAG


def encrypt_stream(
    read: Callable[[int], bytes],
    write: Callable[[bytes], Any],
    key: bytes,
    *,
    size: int,
    plaintext_name: str,
    chunk: int = CHUNK,
) -> None:
    """Encrypt `size` bytes from `read` into `write`, chunk by chunk (one chunk held at a time)."""
    header = _header_bytes(plaintext_name, size, chunk)
    write(MAGIC + struct.pack(">I", len(header)) + header)
    aead = AESGCM(key)
    n = chunk_count(size, chunk)
    for i in range(n):
        block = read(min(chunk, size - i * chunk))
        if len(block) != min(chunk, size - i * chunk):
            raise ModelKeyError("the weights file changed size while it was being encrypted")
        write(aead.encrypt(_nonce(i), block, _aad(header, i, i == n - 1)))


def read_header(read: Callable[[int], bytes]) -> tuple[bytes, dict[str, Any]]:
    """The header of an encrypted member (its bytes and fields); ModelKeyError when it is not one."""
    if read(len(MAGIC)) != MAGIC:
        raise ModelKeyError("not a torchship encrypted member (bad magic)")
    (length,) = struct.unpack(">I", read(4).rjust(4, b"\0"))
    if not 0 < length <= MAX_HEADER:
        raise ModelKeyError(f"encrypted member header of {length} bytes")
    raw = read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise ModelKeyError("encrypted member header is not JSON") from None
    ok = (
        isinstance(header, dict)
        and header.get("format") == 1
        and header.get("cipher") == CIPHER
        and isinstance(header.get("size"), int)
        and header["size"] >= 0
        and isinstance(header.get("chunk_size"), int)
        and 0 < header["chunk_size"] <= 64 << 20
        and isinstance(header.get("plaintext"), str)
        and raw == _header_bytes(header["plaintext"], header["size"], header["chunk_size"])
    )
    if not ok:
        raise ModelKeyError("encrypted member header is not one torchship writes")
    return raw, header


def decrypt_chunks(read: Callable[[int], bytes], key: bytes, *, member: str = "the weights") -> Iterator[bytes]:
    """The plaintext chunk by chunk (one held at a time), each authenticated before it is given out;
    ModelKeyError on damage. Only a consumer that reaches the end has seen every check pass."""
    raw, header = read_header(read)
    size, chunk = header["size"], header["chunk_size"]
    n = chunk_count(size, chunk)
    aead = AESGCM(key)
    for i in range(n):
        want = min(chunk, size - i * chunk) + TAG
        sealed = read(want)
        if len(sealed) != want:
            raise ModelKeyError(f"{member} is cut short at chunk {i} of {n}")
        try:
            yield aead.decrypt(_nonce(i), sealed, _aad(raw, i, i == n - 1))
        except InvalidTag:
            raise ModelKeyError(
                f"chunk {i} of {n} of {member} fails authentication: the archive was altered or damaged"
            ) from None
    if read(1):
        raise ModelKeyError(f"{member} has bytes after its last chunk")


def decrypt_stream(
    read: Callable[[int], bytes], key: bytes, *, member: str = "the weights", total: int | None = None
) -> bytearray:
    """The plaintext, in memory (never on disk), every chunk authenticated; ModelKeyError on damage.

    Each chunk is decrypted straight into its place in one buffer of the plaintext's size (no
    growing, no second copy): a worker's load costs little more than reading the file. `total`:
    the member's size in bytes, when known; the header's plaintext size must agree with it before
    anything is allocated (a forged header cannot make the worker reserve memory it never fills).
    """
    raw, header = read_header(read)
    size, chunk = header["size"], header["chunk_size"]
    if total is not None and encrypted_size(size, chunk, header["plaintext"]) != total:
        raise ModelKeyError(f"{member}: its header's sizes do not match the member's {total} bytes")
    n = chunk_count(size, chunk)
    aead = AESGCM(key)
    out = bytearray(size)
    view = memoryview(out)
    for i in range(n):
        start, length = i * chunk, min(chunk, size - i * chunk)
        sealed = read(length + TAG)
        if len(sealed) != length + TAG:
            raise ModelKeyError(f"{member} is cut short at chunk {i} of {n}")
        try:
            if hasattr(aead, "decrypt_into"):  # cryptography >= 44
                aead.decrypt_into(_nonce(i), sealed, _aad(raw, i, i == n - 1), view[start : start + length])
            else:
                view[start : start + length] = aead.decrypt(_nonce(i), sealed, _aad(raw, i, i == n - 1))
        except InvalidTag:
            view[:] = bytes(size)  # nothing unauthenticated is left in memory either
            raise ModelKeyError(
                f"chunk {i} of {n} of {member} fails authentication: the archive was altered or damaged"
            ) from None
    if read(1):
        raise ModelKeyError(f"{member} has bytes after its last chunk")
    return out


def open_member(model_dir: str | os.PathLike[str], member: str, keyring: str | os.PathLike[str] | None) -> bytearray:
    """Decrypt `member` of an unpacked archive (a worker's model_dir) with the keyring's key."""
    model_dir = Path(model_dir)
    if keyring is None:
        raise ModelKeyError(
            f"{member} is encrypted and this server has no model key (${KEYRING_ENV} is not set: "
            "start the server with `torchship serve start`, which hands the project's model keys to its workers)"
        )
    try:
        entry = json.loads((model_dir / KEYS_MEMBER).read_text(encoding="utf-8"))["members"][member]
        wanted, wrapped = entry["key_id"], entry["wrapped_key"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelKeyError(f"{member} is encrypted but the archive's {KEYS_MEMBER} has no key for it") from None
    _, keys = read_keyring(keyring)
    if wanted not in keys:
        raise ModelKeyError(
            f"{member} is encrypted under model key {wanted}, which this server's keyring ({keyring}) does not hold"
        )
    key = unwrap(keys[wanted], wrapped)
    path = model_dir / member
    with open(path, "rb") as f:
        return decrypt_stream(f.read, key, member=member, total=os.fstat(f.fileno()).st_size)
