"""Encrypted weights in an archive: the members, the keys member, and what the provenance records.

The format itself (chunks, nonces, the data key, key wrap) is `torchship_crypto`'s, the one file that
the worker also reads. Here is what packaging, verification and rotation agree on around it:

- the weights `model.safetensors` travel as `model.safetensors.tsenc` (the MANIFEST's serializedFile);
- `torchship-keys.json` holds, for each encrypted member, the id of the model key that wraps its data
  key and the wrapped key: {"format": "torchship-keys/1", "members": {"model.safetensors.tsenc":
  {"key_id": "mk-...", "wrapped_key": "<base64>"}}}. Rotation rewrites this member alone;
- the provenance's `encryption` field records each encrypted member's cipher, chunk size and count,
  key id and its plaintext (name, size, sha256), beside the ciphertext's own sha256 in `members`,
  so the signature covers the ciphertext and says what it decrypts to.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchship.handlers import torchship_crypto

from .errors import ArchiveError
from .model_keys import KEY_ID

__all__ = [
    "KEYS_MEMBER",
    "SUFFIX",
    "KEYS_FORMAT",
    "ENCRYPTION_FORMAT",
    "CRYPTO_MODULE",
    "KEY_WRAP",
    "KeysEntry",
    "encrypted_name",
    "keys_member_bytes",
    "parse_keys_member",
    "member_record",
    "provenance_record",
    "check_encryptable",
]

KEYS_MEMBER = torchship_crypto.KEYS_MEMBER
SUFFIX = torchship_crypto.SUFFIX
KEYS_FORMAT = "torchship-keys/1"
ENCRYPTION_FORMAT = "torchship-encryption/1"
CRYPTO_MODULE = "torchship_crypto.py"  # packed beside the handler: the worker imports it flat
KEY_WRAP = "AES-KW (RFC 3394)"
_WRAPPED_BYTES = torchship_crypto.KEY_BYTES + 8  # AES key wrap adds one 64-bit block


@dataclass(frozen=True)
class KeysEntry:
    """One encrypted member's line of the keys member: which model key wraps its data key, and the wrapped key."""

    key_id: str
    wrapped_key: str


def encrypted_name(plaintext_name: str) -> str:
    return plaintext_name + SUFFIX


def keys_member_bytes(entries: dict[str, KeysEntry]) -> bytes:
    """The keys member, canonical (sorted keys, fixed layout) so that builds stay byte-identical."""
    doc = {
        "format": KEYS_FORMAT,
        "members": {m: {"key_id": e.key_id, "wrapped_key": e.wrapped_key} for m, e in sorted(entries.items())},
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def parse_keys_member(data: bytes) -> dict[str, KeysEntry]:
    """The keys member's entries by member; ArchiveError naming what is wrong when it is not one torchship writes."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise ArchiveError(f"{KEYS_MEMBER} is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "members"} or doc["format"] != KEYS_FORMAT:
        raise ArchiveError(f'{KEYS_MEMBER} is not a {KEYS_FORMAT} document ({{"format", "members"}})')
    members = doc["members"]
    if not isinstance(members, dict) or not members:
        raise ArchiveError(f"{KEYS_MEMBER} lists no encrypted members")
    out: dict[str, KeysEntry] = {}
    for member, entry in members.items():
        if not isinstance(entry, dict) or set(entry) != {"key_id", "wrapped_key"}:
            raise ArchiveError(f"{KEYS_MEMBER}: the entry of {member!r} is not {{key_id, wrapped_key}}")
        kid, wrapped = entry["key_id"], entry["wrapped_key"]
        if not isinstance(kid, str) or not KEY_ID.fullmatch(kid):
            raise ArchiveError(f"{KEYS_MEMBER}: the key id of {member!r} is not a key id")
        try:
            raw = base64.b64decode(wrapped, validate=True) if isinstance(wrapped, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != _WRAPPED_BYTES:
            raise ArchiveError(f"{KEYS_MEMBER}: the wrapped key of {member!r} is not {_WRAPPED_BYTES} bytes of base64")
        out[str(member)] = KeysEntry(kid, wrapped)
    return out


def member_record(
    *, key_id: str, plaintext_name: str, size: int, sha256: str, chunk: int = torchship_crypto.CHUNK
) -> dict[str, Any]:
    """What the provenance records of one encrypted member."""
    return {
        "cipher": torchship_crypto.CIPHER,
        "chunk_size": chunk,
        "chunks": torchship_crypto.chunk_count(size, chunk),
        "key_id": key_id,
        "key_wrap": KEY_WRAP,
        "plaintext": {"name": plaintext_name, "sha256": sha256, "size": size},
    }


def provenance_record(members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The provenance's `encryption` field."""
    return {"format": ENCRYPTION_FORMAT, "keys_member": KEYS_MEMBER, "members": dict(sorted(members.items()))}


def check_encryptable(weights: Path | None) -> None:
    """ArchiveError unless `weights` are what torchship encrypts: a safetensors file."""
    if weights is None:
        raise ArchiveError("nothing to encrypt: the archive has no weights (give --checkpoint or --weights)")
    if not Path(weights).name.endswith(".safetensors"):
        raise ArchiveError(
            f"refusing to encrypt {Path(weights).name}: torchship encrypts safetensors weights only (the handler "
            "base decrypts and loads safetensors); save them with safetensors.torch.save_file, or package "
            "without --encrypt"
        )
