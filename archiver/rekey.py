"""Model key rotation: rewrap the data keys of encrypted archives under the current model key.

The weights stay as they are. An archive's data key is unwrapped with the old model key and
wrapped with the new one; the archive is rewritten with that new `torchship-keys.json` and a
provenance that names the new key id, every other member copied byte for byte (the ciphertext
is never decrypted or re-encrypted), then re-signed and renamed into place. Only an archive that
verifies against the project's public key first is rewrapped: re-signing is vouching for it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchship.handlers import torchship_crypto

from . import encryption
from .build import CHUNK, zipinfo
from .durable import fsync_dir
from .errors import ArchiveError, VerificationError
from .model_keys import Keyring
from .provenance import PROVENANCE_NAME
from .signing import sign, signature_path
from .verify import ensure_verified

__all__ = ["Rewrapped", "encrypted_archives", "key_ids", "rewrap"]

KEEP = "KEEP"  # in a .rekey- folder: it holds the old archive that could not be put back


@dataclass(frozen=True)
class Rewrapped:
    """One archive whose data keys now wrap under `new_key`: its new provenance and build digest."""

    path: Path
    old_keys: tuple[str, ...]
    new_key: str
    provenance: dict[str, Any]
    digest: str
    changed: bool  # False when it was wrapped under the current key already


def key_ids(archive: Path) -> tuple[str, ...] | None:
    """The model key ids an archive's keys member names (sorted), or None when it has no encrypted weights.
    An archive that cannot be read is `()`: which key it uses cannot be told (it may be any), so nothing
    may be retired while one is in the store."""
    try:
        with zipfile.ZipFile(archive) as zf:
            if encryption.KEYS_MEMBER not in zf.namelist():
                return None
            entries = encryption.parse_keys_member(zf.read(encryption.KEYS_MEMBER))
    except (zipfile.BadZipFile, OSError, ValueError, ArchiveError):
        return ()
    return tuple(sorted({e.key_id for e in entries.values()}))


def encrypted_archives(store: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """(archive, its key ids) of every archive in `store` with encrypted weights, by name."""
    for path in sorted(Path(store).glob("*.mar")):
        ids = key_ids(path)
        if ids is not None:
            yield path, ids


def rewrap(archive: Path, keyring: Keyring, key_dir: Path, *, public_key: Path) -> Rewrapped:
    """Rewrap `archive`'s data keys under `keyring`'s current key, re-sign it and replace it atomically.

    The archive must verify against `public_key` first (VerificationError otherwise), and every key it
    is wrapped under must be in the keyring (ArchiveError otherwise). Nothing changes for an archive
    already wrapped under the current key."""
    archive = Path(archive)
    report = ensure_verified(archive, public_key=public_key)
    prov = report.provenance
    if prov is None or "encryption" not in prov:
        raise ArchiveError(f"{archive.name} has no encrypted weights: nothing to rewrap")
    with zipfile.ZipFile(archive) as zf:
        entries = encryption.parse_keys_member(zf.read(encryption.KEYS_MEMBER))
    old = tuple(sorted({e.key_id for e in entries.values()}))
    digest = "sha256:" + hashlib.sha256(_provenance_bytes(prov)).hexdigest()
    if old == (keyring.current,):
        return Rewrapped(archive, old, keyring.current, prov, digest, changed=False)
    rewrapped: dict[str, encryption.KeysEntry] = {}
    for member, entry in entries.items():
        if entry.key_id not in keyring.keys:
            raise ArchiveError(
                f"{archive.name} is wrapped under model key {entry.key_id}, which the keyring {keyring.path} "
                "does not hold: it was encrypted under another keyring"
            )
        try:
            data_key = torchship_crypto.unwrap(keyring.keys[entry.key_id], entry.wrapped_key)
        except torchship_crypto.ModelKeyError:
            raise ArchiveError(
                f"{archive.name}: model key {entry.key_id} of {keyring.path} does not open its data key "
                "(a different key under that id): not rewrapped"
            ) from None
        rewrapped[member] = encryption.KeysEntry(keyring.current, torchship_crypto.wrap(keyring.current_key, data_key))
    keys_bytes = encryption.keys_member_bytes(rewrapped)
    new_prov = copy.deepcopy(prov)
    for member in rewrapped:
        new_prov["encryption"]["members"][member]["key_id"] = keyring.current
    new_prov["members"][encryption.KEYS_MEMBER] = {
        "sha256": hashlib.sha256(keys_bytes).hexdigest(),
        "size": len(keys_bytes),
    }
    prov_bytes = _provenance_bytes(new_prov)
    _replace(archive, {encryption.KEYS_MEMBER: keys_bytes, PROVENANCE_NAME: prov_bytes}, key_dir, public_key)
    return Rewrapped(
        archive, old, keyring.current, new_prov, "sha256:" + hashlib.sha256(prov_bytes).hexdigest(), changed=True
    )


def _provenance_bytes(prov: dict[str, Any]) -> bytes:
    return (json.dumps(prov, indent=2, sort_keys=True) + "\n").encode()  # as build writes it


def _replace(archive: Path, new: dict[str, bytes], key_dir: Path, public_key: Path) -> None:
    """Rewrite `archive` with the members in `new` replaced (same order, same entry attributes, every
    other member copied byte for byte), sign and verify the copy, then rename it and its signature
    into place. The copy is made in a private folder of the store, under the archive's own name."""
    folder = Path(tempfile.mkdtemp(prefix=".rekey-", dir=archive.parent))
    try:
        copy_path = folder / archive.name
        try:
            with zipfile.ZipFile(archive) as src, open(copy_path, "wb") as raw:
                with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as dst:
                    for info in src.infolist():
                        if info.filename in new:
                            data = new[info.filename]
                            dst.writestr(zipinfo(info.filename, len(data)), data)
                            continue
                        entry = zipinfo(info.filename, info.file_size)
                        entry.date_time, entry.external_attr = info.date_time, info.external_attr
                        with (
                            src.open(info) as f,
                            dst.open(entry, "w", force_zip64=info.file_size >= 0xFFFFFFFF) as out,
                        ):
                            shutil.copyfileobj(f, out, CHUNK)
                raw.flush()
                os.fsync(raw.fileno())
            sign(copy_path, key_dir)
            ensure_verified(copy_path, public_key=public_key)
        except VerificationError as exc:
            raise ArchiveError(f"the rewrapped {archive.name} does not verify, so it was not kept: {exc}") from None
        except OSError as exc:
            raise ArchiveError(f"rewrapping {archive.name} failed: {exc.strerror or exc}; nothing changed") from None
        _swap_in(archive, copy_path, folder)
    finally:
        if not (folder / KEEP).exists():
            shutil.rmtree(folder, ignore_errors=True)


def _swap_in(archive: Path, copy_path: Path, folder: Path) -> None:
    """Rename the signed copy and its signature over `archive` and its signature, or change nothing.

    The old archive and signature are kept aside first (hard links in `folder`, the same file system):
    on any exception between or during the two renames (an OSError, a KeyboardInterrupt) both are put
    back, so the store never holds an archive whose signature is another's. An OSError becomes an
    ArchiveError for this archive alone; anything else is raised again once the old pair is back."""
    sig, new_sig = signature_path(archive), signature_path(copy_path)
    old_archive, old_sig = folder / "old.mar", folder / "old.mar.sig"
    try:
        os.link(archive, old_archive)
        had_sig = os.path.lexists(sig)
        if had_sig:
            os.link(sig, old_sig)
    except OSError as exc:
        raise ArchiveError(f"rewrapping {archive.name} failed: {exc.strerror or exc}; nothing changed") from None
    try:
        # the archive first, then its signature: between the two a reader sees a mismatch and refuses
        os.replace(copy_path, archive)
        os.replace(new_sig, sig)
        fsync_dir(archive.parent)
    except BaseException as exc:
        try:
            _put_back(old_archive, archive)
            if had_sig:
                _put_back(old_sig, sig)
            else:
                sig.unlink(missing_ok=True)
            fsync_dir(archive.parent)
        except OSError as undo:
            (folder / KEEP).touch()  # the only copy of the old pair: not removed
            raise ArchiveError(
                f"replacing {archive.name} failed ({_why(exc)}) and putting the old one back failed too "
                f"({undo.strerror or undo}): the old archive and its signature are kept in {folder} "
                f"(old.mar, old.mar.sig): move them back to {archive} and {sig}"
            ) from None
        if isinstance(exc, OSError):
            raise ArchiveError(
                f"replacing {archive.name} failed: {exc.strerror or exc}; the old archive and signature were "
                "put back: nothing changed"
            ) from None
        raise


def _put_back(kept: Path, path: Path) -> None:
    """Rename the kept old file back over `path`, unless `path` is that file still (never replaced)."""
    try:
        if os.path.samefile(kept, path):
            return
    except OSError:
        pass
    os.replace(kept, path)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return type(exc).__name__
