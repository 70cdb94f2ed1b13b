"""`torchship verify`: is this archive exactly what torchship built, and safe to hand to TorchServe?

An archive is code (the handler runs in the worker), and TorchServe's MANIFEST holds no digests.
Every check runs in order and is reported; the first failure makes the archive refused. The
layout check (see `layout`) comes first: it proves that the members Python reads are the bytes
TorchServe's streaming unzip will extract, so every later check speaks for what the server runs.

An archive with encrypted weights (see `encryption`) gets one more check, `encryption`, which needs
no key: the keys member's shape, each encrypted member's header and size, and their agreement with
the signed provenance. With a model keyring the `weights` check also opens the weights: it unwraps
the data key, authenticates every chunk as it streams by (one chunk held at a time), compares the
plaintext's sha256 with the provenance's, and checks the safetensors header it decrypts to.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from torchship.handlers import torchship_crypto

from . import encryption
from .errors import ArchiveError, VerificationError
from .layout import MAX_MEMBERS, Entry, LayoutError, read_members, scan
from .model_keys import load_keyring
from .provenance import FORMAT, PROVENANCE_NAME
from .signing import signature_path, verify_signature

MAX_TOTAL_BYTES = 64 << 30  # what an archive may unpack to
MAX_RATIO = 200  # uncompressed / compressed, in total and for any member over RATIO_FLOOR (zip bombs)
RATIO_FLOOR = 16 << 20
MAX_PATH, MAX_PATH_PART = 1024, 255  # characters of a member's path, and of one step of it
PICKLE_SUFFIXES = (".pkl", ".pickle")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str


@dataclass
class VerifyReport:
    archive: Path
    checks: list[Check] = field(default_factory=list)
    provenance: dict | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks) and bool(self.checks)

    @property
    def failure(self) -> Check | None:
        return next((c for c in self.checks if c.ok is False), None)

    def to_dict(self) -> dict:
        return {
            "archive": str(self.archive),
            "ok": self.ok,
            "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def verify_archive(
    archive: str | Path, *, public_key: Path | None, allow_unsigned: bool = False, model_keys: Path | None = None
) -> VerifyReport:
    """Run every check; never raises for a bad archive (see `ensure_verified`).

    `model_keys`: a model keyring that opens encrypted weights (without it they are checked as
    ciphertext, and the report says they were not decrypted)."""
    archive = Path(archive)
    report = VerifyReport(archive)
    steps = [
        _check_zip,
        _check_layout,
        _check_safety,
        _check_contents,
        _check_signature,
        _check_provenance,
        _check_identity,
        _check_encryption,
        _check_weights,
    ]
    ctx = {"public_key": public_key, "allow_unsigned": allow_unsigned, "model_keys": model_keys}
    try:
        for step in steps:
            try:
                check: Check | None = step(archive, ctx, report)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, struct.error) as exc:
                check = Check(step.__name__.removeprefix("_check_"), False, f"the archive is corrupt: {exc}")
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001  whatever a crafted archive makes a reader raise is a refusal
                check = Check(
                    step.__name__.removeprefix("_check_"),
                    False,
                    f"unreadable: {type(exc).__name__}: {str(exc)[:200] or 'no detail'}",
                )
            if check is None:  # a check that does not apply to this archive (encryption)
                continue
            report.checks.append(check)
            if check.ok is False:
                break
    finally:
        zf = ctx.get("zip")
        if zf is not None:
            zf.close()
    return report


def ensure_verified(
    archive: Path, *, public_key: Path | None, allow_unsigned: bool = False, model_keys: Path | None = None
) -> VerifyReport:
    report = verify_archive(archive, public_key=public_key, allow_unsigned=allow_unsigned, model_keys=model_keys)
    if not report.ok:
        bad = report.failure
        raise VerificationError(f"{archive.name} failed verification ({bad.name}): {bad.detail}")
    return report


# ------------------------------------------------------------------ the checks


def _check_zip(archive: Path, ctx: dict, report: VerifyReport) -> Check:
    if not archive.is_file():
        return Check("archive", False, f"not found: {archive}")
    try:
        ctx["zip"] = zipfile.ZipFile(archive)
        ctx["infos"] = ctx["zip"].infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        return Check("archive", False, f"not a readable zip archive: {exc}")
    return Check("archive", True, f"zip with {len(ctx['infos'])} members, {archive.stat().st_size / 1e6:.2f} MB")


def _check_layout(archive: Path, ctx: dict, report: VerifyReport) -> Check:
    try:
        with open(archive, "rb") as f:
            entries = scan(f, archive.stat().st_size)
    except LayoutError as exc:
        return Check("layout", False, str(exc))
    if [e.name for e in entries] != [i.filename for i in ctx["infos"]]:  # cannot happen once scan agrees
        return Check("layout", False, "Python's zip reader sees other members than the archive's headers")
    ctx["entries"] = entries
    return Check(
        "layout",
        True,
        f"every byte accounted for: {len(entries)} entries from offset 0, each local "
        "header as the central directory says",
    )


def _check_safety(archive: Path, ctx: dict, report: VerifyReport) -> Check:
    entries: list[Entry] = ctx["entries"]
    if len(entries) > MAX_MEMBERS:
        return Check("safety", False, f"{len(entries)} members (at most {MAX_MEMBERS})")
    seen: set[str] = set()
    total = compressed = 0
    for info in entries:
        name = info.name
        norm = posixpath.normpath(name)
        parts = name[:-1].split("/") if name.endswith("/") else name.split("/")
        if (
            not name
            or name.startswith(("/", "\\"))
            or "\\" in name
            or (len(name) > 1 and name[1] == ":")
            or ".." in parts
            or norm.startswith("../")
            or norm == ".."
        ):
            return Check("safety", False, f"unsafe member path {name!r} (absolute, '..' or backslash)")
        if "" in parts or "." in parts:
            return Check("safety", False, f"unsafe member path {name!r} (an empty or '.' step)")
        if len(name) > MAX_PATH or max(len(p) for p in parts) > MAX_PATH_PART:
            return Check(
                "safety",
                False,
                f"member path {name[:60]!r}... is too long (at most {MAX_PATH} characters, {MAX_PATH_PART} per step)",
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            return Check("safety", False, f"member {name!r} is a symbolic link")
        key = norm.rstrip("/").lower()
        if key in seen:
            return Check("safety", False, f"duplicate member name {name!r}")
        seen.add(key)
        total += info.file_size
        compressed += info.compressed_size
        # one large member that expands beyond the ratio (small ones, e.g. zero-filled tensors, may
        # compress better than that; the overall ratio and size below bound them together)
        if info.file_size > RATIO_FLOOR and info.compressed_size and info.file_size / info.compressed_size > MAX_RATIO:
            return Check(
                "safety",
                False,
                f"member {name!r} expands {info.file_size / info.compressed_size:.0f}x "
                f"(at most {MAX_RATIO}x): a zip bomb?",
            )
        if info.compressed_size == 0 and info.file_size > 0:
            return Check("safety", False, f"member {name!r} claims {info.file_size} bytes from nothing")
    if total > MAX_TOTAL_BYTES:
        return Check("safety", False, f"unpacks to {total / 2**30:.1f} GiB (at most {MAX_TOTAL_BYTES / 2**30:.0f} GiB)")
    if compressed and total / compressed > MAX_RATIO:
        return Check("safety", False, f"expands {total / compressed:.0f}x overall (at most {MAX_RATIO}x)")
    return Check("safety", True, "no absolute or '..' paths, no links, no duplicates, size and ratio bounded")


def _check_contents(archive: Path, ctx: dict, report: VerifyReport) -> Check:
    digests: dict[str, str] = {}
    try:
        with open(archive, "rb") as f:
            for entry, digest in read_members(f, ctx["entries"]):
                digests[entry.name] = digest
    except LayoutError as exc:
        return Check("contents", False, str(exc))
    ctx["digests"] = digests
    total = sum(e.file_size for e in ctx["entries"])
    return Check(
        "contents", True, f"{len(digests)} members read back at their declared sizes and CRCs ({total / 1e6:.2f} MB)"
    )


def _check_signature(archive: Path, ctx: dict, report: VerifyReport) -> Check:
    sig = signature_path(archive)
    if ctx["allow_unsigned"] and not sig.exists():
        return Check("signature", None, "SKIPPED: unsigned archive allowed by --allow-unsigned")
    key = ctx["public_key"]
    if key is None:
        return Check("signature", False, "no public key to verify with (give --public-key)")
    try:
        verify_signature(archive, key)
    except VerificationError as exc:
        return Check("signature", False, str(exc))
    return Check("signature", True, f"{sig.name}: provenance signed by {Path(key).name}")


def _check_provenance(archive: Path, ctx: dict, report: VerifyReport) -> Check:
    zf: zipfile.ZipFile = ctx["zip"]
    names = {i.filename for i in ctx["infos"]}
    if PROVENANCE_NAME not in names:
        if ctx["allow_unsigned"]:
            return Check("provenance", None, f"SKIPPED: no {PROVENANCE_NAME} (not built by torchship)")
        return Check("provenance", False, f"{PROVENANCE_NAME} is missing: not built by torchship")
    try:
        prov = json.loads(zf.read(PROVENANCE_NAME))
        members = prov["members"]
        assert prov.get("format") == FORMAT and isinstance(members, dict)
    except (ValueError, KeyError, AssertionError, TypeError):
        return Check("provenance", False, f"{PROVENANCE_NAME} is unreadable or of an unknown format")
    report.provenance = prov
    listed = set(members)
    present = names - {PROVENANCE_NAME}
    if present != listed:
        extra, missing = sorted(present - listed), sorted(listed - present)
        return Check("provenance", False, f"members differ from the provenance: added {extra}, missing {missing}")
    for name in sorted(listed):
        if ctx["digests"][name] != members[name].get("sha256"):
            return Check("provenance", False, f"{name} was modified (sha256 differs from the provenance)")
    return Check("provenance", True, f"sha256 of all {len(listed)} members match")


def _check_identity(archive: Path, ctx: dict, report: VerifyReport) -> Check:
    try:
        manifest = json.loads(ctx["zip"].read("MAR-INF/MANIFEST.json"))["model"]
    except (KeyError, ValueError, TypeError):
        return Check("identity", False, "MAR-INF/MANIFEST.json is missing or unreadable")
    name, version = manifest.get("modelName"), manifest.get("modelVersion")
    ctx["manifest"] = manifest
    prov = report.provenance
    if prov is not None and (prov["model"].get("name"), prov["model"].get("version")) != (name, version):
        return Check(
            "identity",
            False,
            f"MANIFEST says {name} {version}, provenance says "
            f"{prov['model'].get('name')} {prov['model'].get('version')}",
        )
    if archive.name != f"{name}-{version}.mar":
        return Check(
            "identity",
            False,
            f"file name {archive.name} does not match the model inside ({name} {version}): "
            "a renamed or swapped archive?",
        )
    return Check("identity", True, f"{name} {version}, as the file name says")


def _check_encryption(archive: Path, ctx: dict, report: VerifyReport) -> Check | None:
    """Encrypted members, checked without a key: None for an archive that has none."""
    zf: zipfile.ZipFile = ctx["zip"]
    infos = {i.filename: i for i in ctx["infos"]}
    sealed = sorted(n for n in infos if n.endswith(encryption.SUFFIX))
    prov = report.provenance
    recorded = (prov or {}).get("encryption")
    if not sealed and encryption.KEYS_MEMBER not in infos and recorded is None:
        return None
    fail = lambda detail: Check("encryption", False, detail)  # noqa: E731
    if encryption.KEYS_MEMBER not in infos:
        return fail(
            f"{', '.join(sealed) or 'the provenance says the archive'} is encrypted but the archive has no "
            f"{encryption.KEYS_MEMBER}: no key could open it"
        )
    try:
        keys = encryption.parse_keys_member(zf.read(encryption.KEYS_MEMBER))
    except ArchiveError as exc:
        return fail(str(exc))
    if not sealed:
        return fail(f"{encryption.KEYS_MEMBER} is there but no member is encrypted")
    for member in sealed:
        if member not in keys:
            return fail(f"{member} is encrypted but {encryption.KEYS_MEMBER} has no key for it (missing keys entry)")
    stray = sorted(set(keys) - set(sealed))
    if stray:
        return fail(f"{encryption.KEYS_MEMBER} holds keys for members that are not in the archive: {stray}")
    if prov is not None:
        if not isinstance(recorded, dict) or not isinstance(recorded.get("members"), dict):
            return fail("the archive has encrypted members but its provenance does not record them")
        if (
            recorded.get("format") != encryption.ENCRYPTION_FORMAT
            or recorded.get("keys_member") != encryption.KEYS_MEMBER
        ):
            return fail("the provenance's encryption record is of an unknown format")
        if sorted(recorded["members"]) != sealed:
            return fail(f"encrypted members {sealed} differ from the provenance's {sorted(recorded['members'])}")
    found: dict[str, dict] = {}
    for member in sealed:
        with zf.open(member) as f:
            try:
                _, header = torchship_crypto.read_header(f.read)
            except torchship_crypto.ModelKeyError as exc:
                return fail(f"{member}: {exc}")
        size, chunk, plain = header["size"], header["chunk_size"], header["plaintext"]
        if encryption.encrypted_name(plain) != member:
            return fail(f"{member} says it holds {plain!r}: an encrypted member is named after its plaintext")
        expected = torchship_crypto.encrypted_size(size, chunk, plain)
        if infos[member].file_size != expected:
            return fail(
                f"{member} is {infos[member].file_size} bytes; {size} bytes in {chunk}-byte chunks encrypt to "
                f"{expected}: cut short or padded"
            )
        entry = {
            "cipher": header["cipher"],
            "chunk_size": chunk,
            "chunks": torchship_crypto.chunk_count(size, chunk),
            "key_id": keys[member].key_id,
            "plaintext": {"name": plain, "size": size},
        }
        if prov is not None:
            want = recorded["members"][member]
            got = {**entry, "key_wrap": encryption.KEY_WRAP}
            have = {k: want.get(k) for k in got} if isinstance(want, dict) else {}
            if isinstance(have.get("plaintext"), dict):
                have["plaintext"] = {k: have["plaintext"].get(k) for k in ("name", "size")}
            if have != got:
                differ = sorted(k for k in got if have.get(k) != got[k])
                return fail(f"{member}: the archive and its provenance disagree on {', '.join(differ)}")
            entry["plaintext"] = {**entry["plaintext"], "sha256": want["plaintext"].get("sha256")}
        found[member] = entry
    ctx["encrypted"] = found
    shown = "; ".join(
        f"{m}: {e['cipher']}, key {e['key_id']}, {_chunks(e['chunks'], e['chunk_size'])}" for m, e in found.items()
    )
    agree = "as the provenance records" if prov is not None else "no provenance to compare with"
    return Check("encryption", True, f"{shown}; keys member, headers and sizes {agree}")


def _chunks(n: int, size: int) -> str:
    return f"{n} chunk{'s' if n != 1 else ''} of {size / 2**20:g} MiB"


def _open_encrypted(zf: zipfile.ZipFile, member: str, entry: dict, model_keys: Path) -> str | None:
    """Decrypt `member` as it streams by (one chunk held at a time): every chunk authenticated, the
    plaintext's sha256 and safetensors header checked. The problem, or None."""
    try:
        ring = load_keyring(model_keys)
    except ArchiveError as exc:
        return f"cannot use the model keyring: {exc}"
    kid = entry["key_id"]
    if kid not in ring.keys:
        return f"encrypted under model key {kid}, which the keyring {model_keys} does not hold (wrong keyring?)"
    wrapped = encryption.parse_keys_member(zf.read(encryption.KEYS_MEMBER))[member].wrapped_key
    try:
        data_key = torchship_crypto.unwrap(ring.keys[kid], wrapped)
    except torchship_crypto.ModelKeyError:
        return f"model key {kid} of {model_keys} does not open this archive's data key: a wrong key under that id"
    size = entry["plaintext"]["size"]
    digest = hashlib.sha256()
    head = bytearray()  # the plaintext's first bytes: the safetensors header (at most 8 bytes + 100 MiB)
    need, pos = 8, 0
    with zf.open(member) as f:
        try:
            for block in torchship_crypto.decrypt_chunks(f.read, data_key, member=member):
                digest.update(block)
                offset, pos = pos, pos + len(block)
                while len(head) < min(need, pos):
                    head += block[len(head) - offset : need - offset]
                    if need == 8 and len(head) >= 8:
                        (length,) = struct.unpack("<Q", head[:8])
                        need = 8 + min(length, max(size - 8, 0), 100 << 20)
        except torchship_crypto.ModelKeyError as exc:
            return str(exc)
    want = entry["plaintext"].get("sha256")
    if want is not None and digest.hexdigest() != want:
        return "decrypts to other weights than the provenance records (plaintext sha256 differs)"
    problem = _safetensors_header_problem(io.BytesIO(bytes(head)), size)
    return f"decrypted {entry['plaintext']['name']}: {problem}" if problem else None


def _check_weights(archive: Path, ctx: dict, report: VerifyReport) -> Check:
    zf: zipfile.ZipFile = ctx["zip"]
    checked = []
    notes = []
    encrypted: dict[str, dict] = ctx.get("encrypted") or {}
    for info in ctx["infos"]:
        lower = info.filename.lower()
        if info.filename in encrypted:
            entry = encrypted[info.filename]
            plain = entry["plaintext"]["name"]
            if not plain.endswith(".safetensors"):
                return Check(
                    "weights", False, f"{info.filename} decrypts to {plain}: torchship encrypts safetensors only"
                )
            n = entry["chunks"]
            how = f"{entry['cipher']}, key {entry['key_id']}, {n} chunk{'s' if n != 1 else ''}"
            if ctx.get("model_keys") is None:
                notes.append(f"{info.filename}: encrypted ({how}); not decrypted: no model key")
            else:
                problem = _open_encrypted(zf, info.filename, entry, Path(ctx["model_keys"]))
                if problem:
                    return Check("weights", False, f"{info.filename}: {problem}")
                notes.append(
                    f"{info.filename}: decrypted and authenticated ({how}); {plain}: sha256 as the provenance "
                    "records, tensors only"
                )
            checked.append(info.filename)
            continue
        if lower.endswith(PICKLE_SUFFIXES):
            return Check("weights", False, f"{info.filename} is a pickle: it could run code when loaded")
        if lower.endswith(".safetensors"):
            problem = _safetensors_problem(zf, info)
        elif lower.endswith(TORCH_SUFFIXES):
            problem = _torch_problem(zf, info)
        else:
            continue
        if problem:
            return Check("weights", False, f"{info.filename}: {problem}")
        checked.append(info.filename)
    serialized = (ctx.get("manifest") or {}).get("serializedFile")
    if serialized and serialized not in checked:
        return Check(
            "weights",
            False,
            f"serialized file {serialized} is neither safetensors nor a torch file that loads with weights_only",
        )
    plain = [c for c in checked if c not in encrypted]
    said = [", ".join(plain) + " hold tensors only"] if plain else []
    if not checked:
        said = ["no weight files"]
    return Check("weights", True, "; ".join(said + notes))


def weights_problem(path: Path) -> str | None:
    """Why a weights file on disk is unsafe or corrupt, or None (used before packaging)."""
    lower = path.name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        return "is a pickle: it could run code when loaded"
    if lower.endswith(".safetensors"):
        with open(path, "rb") as f:
            return _safetensors_header_problem(f, path.stat().st_size)
    if lower.endswith(TORCH_SUFFIXES):
        return _torch_bytes_problem(path.read_bytes())
    return None


def _safetensors_problem(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    with zf.open(info) as f:
        return _safetensors_header_problem(f, info.file_size)


def _safetensors_header_problem(f, file_size: int) -> str | None:
    """The problem of the safetensors file `f` of `file_size` bytes, by the worker's own check
    (torchship_crypto.safetensors_header: safetensors' rules, the layout of every tensor); or None."""
    head = f.read(8)
    if len(head) == 8:
        length = int.from_bytes(head, "little")
        if length <= min(file_size - 8, torchship_crypto.SAFETENSORS_MAX_HEADER):
            head += f.read(length)
    _, problem = torchship_crypto.safetensors_header(head, file_size)
    return problem


def _torch_problem(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    return _torch_bytes_problem(zf.read(info))


def _torch_bytes_problem(data: bytes) -> str | None:
    import pickle

    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, AttributeError, TypeError) as exc:
        return f"does not load with weights_only=True (a pickle that could run code?): {str(exc).splitlines()[0][:120]}"
    return None
