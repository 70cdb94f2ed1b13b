"""Model weights encrypted at rest: the format, and the one place that encrypts and decrypts it.

An encrypted member (`<name>.tsenc`, e.g. `model.safetensors.tsenc`) is the weights file cut into
chunks, each sealed with AES-256-GCM under a data key of its own archive:

    b"TSENC1\\n" | header length (4 bytes, big-endian) | header (JSON) | chunk 0 | chunk 1 | ...

The header names the cipher, the chunk size, the plaintext's size and name; each chunk is its
ciphertext and 16-byte tag. Chunk i's nonce is i (96 bits, big-endian): unique under its data
key, so drawing nothing keeps builds reproducible. Its associated data is the header, i, and
whether it is the last chunk, so chunks cannot be moved, dropped, added or cut short, and the
header cannot change without every chunk failing.

The data key is HMAC-SHA256 under the project's model key of one unambiguous (length-prefixed)
encoding of: the archive's name, its version, the member's exact header bytes (which hold the
plaintext's name and size and the chunk size) and the plaintext's sha256. Two members get the same
data key only when all of these are the same, and then they are the same bytes under the same
header: the same ciphertext (a rebuild is byte-identical), never two messages under one (key,
nonce). Packaging hashes the plaintext as it encrypts it and refuses to write the member if those
bytes are not the ones whose sha256 the key was derived from. The data key travels in the archive
wrapped by the model key (AES key wrap, RFC 3394) in `torchship-keys.json`, beside the key's id:
rotating the model key rewraps it there and leaves the encrypted weights as they are.

The plaintext is a safetensors file; `safetensors_header` is the one strict check of its layout
(safetensors' own rules), shared by the worker (`tensors_in`) and by package and verify, so that
neither accepts weights the other refuses.

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
MIN_CHUNK = 64 << 10  # chunk sizes a member may declare: a tiny one multiplies decryption's cost
MAX_CHUNK = 64 << 20


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


def data_key(model_key: bytes, *, name: str, version: str, header: bytes, plaintext_sha256: str) -> bytes:
    """The data key of one archive's member (`header`: its exact header bytes, `member_header`).

    HMAC-SHA256 over length-prefixed fields, so no two different inputs encode alike: the key is
    the same only for the same archive name, version, header and plaintext, i.e. for the same
    ciphertext (reproducible builds), and differs whenever any of them does.
    """
    fields = (b"torchship data key v2", name.encode(), version.encode(), bytes(header), plaintext_sha256.encode())
    message = b"".join(struct.pack(">Q", len(f)) + f for f in fields)
    return hmac.new(model_key, message, hashlib.sha256).digest()


def wrap(model_key: bytes, key: bytes) -> str:
    return base64.b64encode(aes_key_wrap(model_key, key)).decode()


def unwrap(model_key: bytes, wrapped: str) -> bytes:
    try:
        return aes_key_unwrap(model_key, base64.b64decode(wrapped, validate=True))
    except (InvalidUnwrap, ValueError) as exc:
        raise ModelKeyError(f"the model key does not open this archive's data key ({exc.__class__.__name__})") from None


# ------------------------------------------------------------------ the format


def member_header(plaintext_name: str, size: int, chunk: int = CHUNK) -> bytes:
    """The exact header bytes of an encrypted member (what its data key and every chunk are bound to)."""
    header = {"cipher": CIPHER, "chunk_size": chunk, "format": 1, "plaintext": plaintext_name, "size": size}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


_header_bytes = member_header


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
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise ValueError(f"chunk size {chunk} is not between {MIN_CHUNK} and {MAX_CHUNK} bytes")
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
        and type(header.get("size")) is int
        and header["size"] >= 0
        and type(header.get("chunk_size")) is int
        and MIN_CHUNK <= header["chunk_size"] <= MAX_CHUNK
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


# ------------------------------------------------------------------ the plaintext: safetensors

SAFETENSORS_MAX_HEADER = 100 << 20
# safetensors' dtypes and their sizes in bytes (the worker views those torch has)
SAFETENSORS_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_MAX_ELEMENTS = 1 << 64  # safetensors counts in usize


class _Refused(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"safetensors header names {key[:80]!r} twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Refused(f"safetensors header holds {name}, which is not JSON")


def _natural(value: Any) -> bool:
    return type(value) is int and value >= 0


def safetensors_header(
    head: bytes | bytearray | memoryview, file_size: int
) -> tuple[dict[str, Any] | None, str | None]:
    """(header, None) when a file of `file_size` bytes whose first bytes are `head` (at least its
    8-byte length and its header) is a safetensors file as safetensors itself would load it, with
    every tensor's layout checked (`safetensors_layout_problem`); (None, the problem) otherwise.

    The header must be UTF-8 JSON: an object, no name twice, nested no deeper than Python parses."""
    if file_size < 8 or len(head) < 8:
        return None, "too short for safetensors"
    length = int.from_bytes(bytes(head[:8]), "little")
    if not 2 <= length <= min(file_size - 8, SAFETENSORS_MAX_HEADER):
        return None, f"safetensors header length ({length} bytes) is out of range"
    raw = bytes(head[8 : 8 + length])
    if len(raw) != length:
        return None, "safetensors header is cut short"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "safetensors header is not UTF-8"
    try:
        header = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except RecursionError:
        return None, "safetensors header is JSON nested too deeply"
    except _Refused as exc:
        return None, str(exc)
    except ValueError:
        return None, "safetensors header is not JSON"
    if not isinstance(header, dict):
        return None, "safetensors header is not a JSON object"
    problem = safetensors_layout_problem(header, file_size - 8 - length, data_start=8 + length)
    return (None, problem) if problem else (header, None)


def safetensors_layout_problem(header: dict[str, Any], data_size: int, *, data_start: int = 8) -> str | None:
    """Why a parsed safetensors header does not describe its `data_size` bytes of data exactly, or None.

    safetensors' own rules: `__metadata__`, when there, maps strings to strings; every other entry is
    exactly {dtype: a known dtype, shape: [non-negative ints], data_offsets: [begin, end]} with
    end - begin = the shape's elements times the dtype's size; sorted by offsets, the tensors tile
    the data from 0 to its last byte (no gap, no overlap, nothing after); and each non-empty tensor
    starts (at `data_start` + begin in the file) on a multiple of its dtype's size."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                return "safetensors __metadata__ is not a mapping of strings to strings"
            continue
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            return f"safetensors entry {name!r} is malformed (not {{dtype, shape, data_offsets}})"
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        itemsize = SAFETENSORS_ITEMSIZE.get(dtype) if isinstance(dtype, str) else None
        if itemsize is None:
            return f"safetensors entry {name!r} has an unknown dtype"
        if not isinstance(shape, list) or not all(_natural(d) for d in shape):
            return f"safetensors entry {name!r} has a malformed shape"
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_natural(o) for o in offsets):
            return f"safetensors entry {name!r} has malformed data_offsets"
        count = 0 if 0 in shape else 1
        for d in shape if count else ():
            count *= d
            if count > _MAX_ELEMENTS:
                return f"safetensors entry {name!r} has a shape too large"
        begin, end = offsets
        if end - begin != count * itemsize:
            return f"safetensors entry {name!r}: its data_offsets do not hold its shape of {dtype}"
        if count and (data_start + begin) % itemsize:
            return f"safetensors entry {name!r} is not aligned to its dtype's {itemsize} bytes"
        spans.append((begin, end, name))
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            return f"safetensors entry {name!r} overlaps another or leaves a gap before it"
        at = end
    if at > data_size:
        return "safetensors offsets point past the end of the file (truncated?)"
    if at != data_size:
        return f"safetensors data has {data_size - at} bytes after its last tensor"
    return None
