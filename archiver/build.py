"""Build a .mar: reproducible, with provenance inside, written atomically, never overwriting by accident.

torch-model-archiver's Python API makes the MANIFEST (so TorchServe reads what it expects);
torchship writes the zip itself, because the archiver's zip is neither reproducible (it stamps
file times and `createdOn`) nor fast (it copies every file to a temp folder first, and deflate
takes ~30 s for 300 MB). Here every member is streamed once: read, hashed (sha256 for the
provenance), and written uncompressed, in a fixed order with fixed times and modes, so the same
inputs give a byte-identical archive.

With a model key the weights are encrypted on the way in (`encryption`, `torchship_crypto`): streamed
chunk by chunk into `<weights>.tsenc`, one chunk in memory at a time, under a data key derived from the
model key, the archive's name and version, the member's header and the weights' sha256, so an encrypted
build is as reproducible as a plain one for the same key. The bytes encrypted are always hashed as they
are read: if they are not the ones whose sha256 the key was derived from (a sidecar digest gone stale,
a file changed meanwhile), nothing is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from torchship.handlers import HANDLER_DIR, torchship_crypto

from . import encryption, preflight
from .digests import SIDECAR, recorded_digest, sha256_file
from .durable import fsync_dir
from .errors import ArchiveError
from .model_config import validate_model_config
from .model_keys import Keyring
from .provenance import PROVENANCE_NAME, build_time, provenance_document
from .requirements import read_requirements_file
from .spec import ArchiveSpec
from .verify import weights_problem

__all__ = ["build", "archive_path", "BuildResult", "ZIP_TIME", "CHUNK"]

CHUNK = 16 << 20
# DOS time of SOURCE_DATE_EPOCH's default (1980-01-01 00:00:00, the earliest a zip can hold)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
MANIFEST_NAME = "MAR-INF/MANIFEST.json"
LARGE = 64 << 20  # files above this size show progress


@dataclass(frozen=True)
class BuildResult:
    path: Path
    provenance: dict
    digest: str  # sha256 of the provenance member: identifies the build (it pins every member)
    notes: tuple[str, ...] = ()  # what the import check found worth saying that did not stop it
    checkpoint: Path | None = None  # the training run packaged, when there is one (set by the caller)
    handler_base: tuple[str, ...] = ()  # torchship's handler base files packed because the code imports them


def archive_path(store: Path, name: str, version: str) -> Path:
    return Path(store) / f"{name}-{version}.mar"


@dataclass(frozen=True)
class _Encrypt:
    """A weights file to encrypt into its member: the data key, and the plaintext's size and the
    sha256 the key was derived from (the bytes encrypted are hashed again and must match it)."""

    source: Path
    key: bytes
    size: int
    sha256: str
    recorded: bool  # the sha256 came from the digests sidecar, not from reading the file


def build(
    spec: ArchiveSpec,
    store: str | os.PathLike,
    *,
    force: bool = False,
    meta: dict | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    check_imports: bool = False,
    model_key: Keyring | None = None,
    encrypted: dict[str, Any] | None = None,
) -> BuildResult:
    """Build `store/<name>-<version>.mar` from `spec`.

    `meta` is the checkpoint's meta.json (lineage for the provenance). An existing archive is
    replaced only with `force`. The spec's requirements file must hold requirements only (see
    `requirements`). With `check_imports`, the handler and model file must import in the server's
    Python first (see `preflight`). The archive appears whole or not at all: it is written to a
    hidden temp file in the store, flushed to disk, and renamed into place.

    `model_key`: encrypt the weights (safetensors only) under the keyring's current key; the
    archive gets `<weights>.tsenc`, `torchship-keys.json` and `torchship_crypto.py` (see
    `encryption`). `encrypted`: the provenance `encryption` record of members that are ciphertext
    already, packed as they are (a variant of an encrypted archive, see `derive`).
    """
    validate_model_config(spec.model_config)
    if model_key is not None and encrypted is not None:
        raise ValueError("give model_key (encrypt the weights) or encrypted (already encrypted), not both")
    if model_key is not None:
        spec = _with_crypto_module(spec)
    for _, path in spec.files():
        problem = weights_problem(path)
        if problem:
            raise ArchiveError(f"refusing to package {path}: {problem}")
    requirements = read_requirements_file(spec.requirements) if spec.requirements else None
    store = Path(store)
    target = store / spec.file_name
    if target.exists() and not force:
        raise ArchiveError(f"{target} exists: package another --version, or pass --force to replace it")
    notes: tuple[str, ...] = ()
    if check_imports:
        notes = preflight.check_imports(spec, requirements=requirements).notes
    if progress is None:
        progress = _stderr_progress
    members = _members(spec, ciphertext=encrypted is not None)
    weights_member = spec.weights.name if spec.weights else None
    record: dict[str, Any] | None = None
    if model_key is not None:
        members, weights_member, record = _encrypted_members(spec, members, model_key)
    elif encrypted is not None:
        record = _carried_record(encrypted, [n for n, _ in members])
    manifest = _manifest(spec, meta, serialized=weights_member)
    try:
        store.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.file_name}.", suffix=".tmp", dir=store)
    except OSError as exc:
        raise ArchiveError(f"cannot write to the model store {store}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                digests: dict[str, dict] = {}
                for arcname, source in members:
                    if isinstance(source, _Encrypt):
                        digests[arcname] = _write_encrypted(zf, arcname, source, progress)
                    else:
                        digests[arcname] = _write_member(zf, arcname, source, progress)
                digests[MANIFEST_NAME] = _write_member(zf, MANIFEST_NAME, manifest, progress)
                prov = provenance_document(
                    spec, digests, meta, requirements=requirements, encryption=record, weights=weights_member
                )
                prov_bytes = (json.dumps(prov, indent=2, sort_keys=True) + "\n").encode()
                _write_member(zf, PROVENANCE_NAME, prov_bytes, progress)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
        fsync_dir(store)
    except OSError as exc:
        raise ArchiveError(f"packaging {spec.file_name} failed: {exc.strerror or exc}; nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)
    return BuildResult(target, prov, "sha256:" + hashlib.sha256(prov_bytes).hexdigest(), notes)


def _members(spec: ArchiveSpec, *, ciphertext: bool = False) -> list[tuple[str, Path | bytes | _Encrypt]]:
    """(name in the archive, file or bytes), in the archive's fixed order. The names of encrypted
    members and of the keys member are torchship's, unless `ciphertext` (members already encrypted)."""
    out: list[tuple[str, Path | bytes | _Encrypt]] = [(Path(p).name, Path(p)) for _, p in spec.files()]
    if spec.model_config:
        out.append(("model-config.yaml", yaml.safe_dump(spec.model_config, sort_keys=True).encode()))
    names = [n for n, _ in out]
    clash = {n for n in names if names.count(n) > 1} | ({PROVENANCE_NAME, MANIFEST_NAME} & set(names))
    if clash:
        raise ArchiveError(f"two files would share the name {', '.join(sorted(clash))} in the archive")
    reserved = sorted(n for n in names if n == encryption.KEYS_MEMBER or n.endswith(encryption.SUFFIX))
    if reserved and not ciphertext:
        raise ArchiveError(
            f"{reserved[0]} is a name torchship gives encrypted archives' own members: rename the file "
            "(or package with --encrypt, which writes them)"
        )
    return sorted(out, key=lambda m: m[0])


def _with_crypto_module(spec: ArchiveSpec) -> ArchiveSpec:
    """`spec` with torchship_crypto.py beside the handler (the worker imports it flat to decrypt),
    after refusing weights that torchship does not encrypt."""
    encryption.check_encryptable(spec.weights)
    if any(Path(p).name == encryption.CRYPTO_MODULE for _, p in spec.files()):
        return spec  # a copy of your own is packed instead, as for the handler base
    return dataclasses.replace(spec, extra_files=(*spec.extra_files, HANDLER_DIR / encryption.CRYPTO_MODULE))


def _encrypted_members(
    spec: ArchiveSpec, members: list[tuple[str, Path | bytes | _Encrypt]], model_key: Keyring
) -> tuple[list[tuple[str, Path | bytes | _Encrypt]], str, dict[str, Any]]:
    """The members with the weights replaced by their encrypted member and the keys member added;
    the encrypted member's name; the provenance's encryption record."""
    assert spec.weights is not None  # _with_crypto_module checked
    plain = spec.weights.name
    member = encryption.encrypted_name(plain)
    known = recorded_digest(spec.weights)
    sha = known or sha256_file(spec.weights)
    size = spec.weights.stat().st_size
    data_key = torchship_crypto.data_key(
        model_key.current_key,
        name=spec.name,
        version=spec.version,
        header=torchship_crypto.member_header(plain, size),
        plaintext_sha256=sha,
    )
    wrapped = torchship_crypto.wrap(model_key.current_key, data_key)
    out: list[tuple[str, Path | bytes | _Encrypt]] = [(n, s) for n, s in members if n != plain]
    out.append((member, _Encrypt(spec.weights, data_key, size, sha, recorded=known is not None)))
    keys = {member: encryption.KeysEntry(model_key.current, wrapped)}
    out.append((encryption.KEYS_MEMBER, encryption.keys_member_bytes(keys)))
    record = encryption.member_record(key_id=model_key.current, plaintext_name=plain, size=size, sha256=sha)
    return sorted(out, key=lambda m: m[0]), member, encryption.provenance_record({member: record})


def _carried_record(encrypted: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The encryption record of members packed as the ciphertext they are; each must be there."""
    members = encrypted.get("members") if isinstance(encrypted, dict) else None
    if not isinstance(members, dict) or not members:
        raise ArchiveError("the encryption record lists no encrypted members")
    missing = sorted((set(members) | {encryption.KEYS_MEMBER}) - set(names))
    if missing:
        raise ArchiveError(f"encrypted archive without {', '.join(missing)}: its weights could not be opened")
    return encryption.provenance_record(dict(members))


def _manifest(spec: ArchiveSpec, meta: dict | None, *, serialized: str | None = None) -> bytes:
    """MAR-INF/MANIFEST.json as torch-model-archiver writes it, with a reproducible createdOn;
    `serialized` names the weights member (the encrypted one, when encrypting)."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging_utils import ModelExportUtils

    config = ModelArchiverConfig(
        model_name=spec.name,
        handler=str(spec.handler),
        version=spec.version,
        serialized_file=serialized if spec.weights else None,
        model_file=str(spec.model_file) if spec.model_file else None,
        requirements_file=str(spec.requirements) if spec.requirements else None,
        config_file="model-config.yaml" if spec.model_config else None,
        export_path=tempfile.gettempdir(),
    )
    try:
        manifest = json.loads(ModelExportUtils.generate_manifest_json(config))
    except Exception as exc:  # the archiver raises plain exceptions of many kinds
        raise ArchiveError(f"torch-model-archiver refused the spec of {spec.file_name}: {exc}") from None
    manifest["createdOn"] = time.strftime("%d/%m/%Y %H:%M:%S", time.gmtime(build_time(meta)))
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def zipinfo(arcname: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # Unix, so the mode below is read
    info.external_attr = (0o100644 & 0xFFFF) << 16
    info.file_size = size
    return info


def _write_member(
    zf: zipfile.ZipFile, arcname: str, source: Path | bytes, progress: Callable[[str, int, int], None]
) -> dict:
    digest = hashlib.sha256()
    if isinstance(source, (bytes, bytearray)):
        digest.update(source)
        zf.writestr(zipinfo(arcname, len(source)), bytes(source))
        return {"sha256": digest.hexdigest(), "size": len(source)}
    size = source.stat().st_size
    known = recorded_digest(source)  # recorded when training wrote the file, if still unchanged
    done = 0
    # Otherwise sha256 runs in a second thread while this one computes the zip's CRC-32 and
    # writes: hashlib, zlib and file writes release the GIL on large blocks.
    with (
        open(source, "rb") as src,
        zf.open(zipinfo(arcname, size), "w", force_zip64=size >= 0xFFFFFFFF) as dst,
        ThreadPoolExecutor(max_workers=1) as hasher,
    ):
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            hashed = hasher.submit(digest.update, block) if known is None else None
            dst.write(block)
            if hashed is not None:
                hashed.result()
            done += len(block)
            if size >= LARGE:
                progress(arcname, done, size)
    if done != size:
        raise ArchiveError(f"{source} changed size while it was packed")
    return {"sha256": known or digest.hexdigest(), "size": size}


def _write_encrypted(
    zf: zipfile.ZipFile, arcname: str, source: _Encrypt, progress: Callable[[str, int, int], None]
) -> dict:
    """Encrypt `source` into member `arcname`, one chunk in memory at a time; its sha256 (of the
    ciphertext, as for every member) runs in a second thread while this one encrypts and writes."""
    size = torchship_crypto.encrypted_size(source.size, plaintext_name=source.source.name)
    digest, plain = hashlib.sha256(), hashlib.sha256()
    done = 0
    with (
        open(source.source, "rb") as src,
        zf.open(zipinfo(arcname, size), "w", force_zip64=size >= 0xFFFFFFFF) as dst,
        ThreadPoolExecutor(max_workers=1) as hasher,
    ):

        def read(n: int) -> bytes:
            block = src.read(n)
            hasher.submit(plain.update, block)  # always: in order before this chunk's ciphertext hash
            return block

        def write(block: bytes) -> None:
            nonlocal done
            hashed = hasher.submit(digest.update, block)
            dst.write(block)
            hashed.result()
            done += len(block)
            if size >= LARGE:
                progress(arcname, done, size)

        try:
            torchship_crypto.encrypt_stream(
                read, write, source.key, size=source.size, plaintext_name=source.source.name
            )
        except torchship_crypto.ModelKeyError:
            raise ArchiveError(f"{source.source} changed size while it was encrypted") from None
    if done != size:
        raise ArchiveError(f"{source.source} changed while it was encrypted")
    if plain.hexdigest() != source.sha256:  # its data key is for other bytes: never publish this ciphertext
        why = (
            f"its sha256 recorded in {SIDECAR} is stale (delete that file and package again)"
            if source.recorded
            else "it changed while it was encrypted"
        )
        raise ArchiveError(f"{source.source} is not the file its data key was derived for: {why}; nothing was written")
    return {"sha256": digest.hexdigest(), "size": size}


def _stderr_progress(name: str, done: int, total: int) -> None:
    width = 24
    filled = int(width * done / max(total, 1))
    end = "\n" if done >= total else ""
    sys.stderr.write(
        f"\rpacking {name} [{'#' * filled}{'.' * (width - filled)}] {done / 2**20:.0f}/{total / 2**20:.0f} MiB{end}"
    )
    sys.stderr.flush()
