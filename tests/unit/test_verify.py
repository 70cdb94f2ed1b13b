"""Packaging security: reproducible builds, provenance, signatures, and every way to tamper refused."""

import base64
import json
import shutil
import struct
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from tests.fixtures import tamper, zipcraft
from torchship import archiver
from torchship.archiver import ArchiveSpec, example_spec, verify_archive
from torchship.archiver.provenance import PROVENANCE_NAME
from torchship.sdk.errors import ArchiveError, VerificationError


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_dir = tmp_path_factory.mktemp("keys")
    archiver.ensure_keys(key_dir)
    return key_dir


@pytest.fixture
def built(mlp_run, tmp_path, keys):
    return archiver.package(example_spec("mlp", mlp_run, "1.0"), tmp_path / "store", keys)


def verdict(path, keys, **kw):
    report = verify_archive(path, public_key=archiver.public_key_path(keys), **kw)
    return report, (report.failure.name if report.failure else None)


def test_a_fresh_archive_passes_every_check(built, keys):
    report, failed = verdict(built.path, keys)
    assert report.ok and failed is None
    assert [c.name for c in report.checks] == [
        "archive",
        "layout",
        "safety",
        "contents",
        "signature",
        "provenance",
        "identity",
        "weights",
    ]
    assert all(c.ok for c in report.checks)


def test_provenance_pins_members_and_lineage(built, mlp_run):
    prov = built.provenance
    meta = json.loads((mlp_run / "meta.json").read_text())
    assert prov["model"] == {"name": "mlp", "version": "1.0"}
    assert prov["checkpoint"]["data"]["fingerprint"] == meta["data"]["fingerprint"]
    assert prov["checkpoint"]["metrics"] == meta["metrics"] and prov["checkpoint"]["git_commit"] == meta["git_commit"]
    assert prov["tools"]["torch"] == torch.__version__.split("+")[0] or prov["tools"]["torch"].startswith("2.13")
    with zipfile.ZipFile(built.path) as z:
        assert set(prov["members"]) == set(z.namelist()) - {PROVENANCE_NAME}
        import hashlib

        assert prov["members"]["model.safetensors"]["sha256"] == hashlib.sha256(z.read("model.safetensors")).hexdigest()


def test_reproducible_byte_for_byte(mlp_run, tmp_path, keys):
    a = archiver.build(example_spec("mlp", mlp_run, "1.0"), tmp_path / "a").path
    # the same inputs copied elsewhere, later, with other file times
    time.sleep(1.1)
    copy = tmp_path / "run-copy"
    shutil.copytree(mlp_run, copy)
    b = archiver.build(example_spec("mlp", copy, "1.0"), tmp_path / "b").path
    assert a.read_bytes() == b.read_bytes()


def test_a_copy_with_its_signature_verifies_elsewhere(built, keys, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(built.path, other)
    shutil.copy(archiver.signature_path(built.path), other)
    assert verdict(other / built.path.name, keys)[0].ok


def forge_provenance(path):
    """What an attacker who can write the archive would do next: make the provenance match."""
    import hashlib

    def change(members):
        prov = json.loads(members[PROVENANCE_NAME])
        prov["members"] = {
            n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for n, d in members.items()
            if n != PROVENANCE_NAME
        }
        return {**members, PROVENANCE_NAME: json.dumps(prov).encode()}

    tamper.rewrite(path, change)


TAMPERS = {
    "weights byte": lambda m: {**m, "model.safetensors": tamper.flip_byte(m["model.safetensors"])},
    "handler": lambda m: {**m, "mlp_handler.py": m["mlp_handler.py"] + b"\nimport os; os.system('id')\n"},
    "manifest": lambda m: {
        **m,
        "MAR-INF/MANIFEST.json": m["MAR-INF/MANIFEST.json"].replace(b"mlp_handler.py", b"evil_handler.py"),
    },
    "member added": lambda m: {**m, "evil.py": b"import os"},
    "member renamed": lambda m: {("renamed.py" if k == "torchship_oip.py" else k): v for k, v in m.items()},
}


@pytest.mark.parametrize("what", sorted(TAMPERS))
def test_tampering_is_refused_by_the_digests_and_by_the_signature(built, keys, what):
    tamper.rewrite(built.path, TAMPERS[what])
    assert verdict(built.path, keys)[1] == "provenance"
    # rewriting the provenance to match breaks the signature, which covers it
    forge_provenance(built.path)
    assert verdict(built.path, keys)[1] == "signature"


def test_a_signature_by_another_key_or_a_broken_signature_is_refused(built, keys, tmp_path):
    sig = archiver.signature_path(built.path)
    original = sig.read_bytes()
    other_keys = tmp_path / "other-keys"
    archiver.sign(built.path, other_keys)
    assert verdict(built.path, keys)[1] == "signature"
    bundle = json.loads(original)
    raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(bundle))
    assert verdict(built.path, keys)[1] == "signature"
    sig.write_bytes(b"not a bundle")
    assert verdict(built.path, keys)[1] == "signature"
    sig.write_bytes(original)
    assert verdict(built.path, keys)[0].ok
    sig.unlink()
    report, failed = verdict(built.path, keys)
    assert failed == "signature" and "missing" in report.failure.detail


def test_an_older_signed_archive_swapped_in_under_a_new_name_is_refused(mlp_run, tmp_path, keys):
    old = archiver.package(example_spec("mlp", mlp_run, "1.0"), tmp_path, keys).path
    swapped = tmp_path / "mlp-2.0.mar"
    shutil.copy(old, swapped)
    shutil.copy(archiver.signature_path(old), archiver.signature_path(swapped))
    report, failed = verdict(swapped, keys)
    assert failed == "identity" and "renamed or swapped" in report.failure.detail


def unsafe_archive(tmp_path, keys, add):
    (tmp_path / "h.py").write_text("class H:\n    pass\n")
    spec = ArchiveSpec("evil", "1.0", tmp_path / "h.py")
    path = archiver.build(spec, tmp_path / "store").path
    add(path)
    archiver.sign(path, keys)  # signed by us: only the content checks can refuse it
    return path


@pytest.mark.parametrize(
    "case, add, check, detail",
    [
        (
            "zip slip",
            lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("../../evil.py"), b"x"),
            "safety",
            "unsafe member path",
        ),
        (
            "absolute",
            lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("/etc/cron.d/x"), b"x"),
            "safety",
            "unsafe member path",
        ),
        (
            "backslash",
            lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("..\\evil.py"), b"x"),
            "safety",
            "unsafe member path",
        ),
        (
            "symlink",
            lambda p: tamper.add_raw_member(p, tamper.symlink_info("link"), b"/etc/passwd"),
            "safety",
            "symbolic link",
        ),
        ("duplicate", lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("h.py"), b"x"), "layout", "duplicate"),
        ("case duplicate", lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("H.py"), b"x"), "layout", "duplicate"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, keys, case, add, check, detail):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        path = unsafe_archive(tmp_path, keys, add)
    report, failed = verdict(path, keys)
    assert failed == check and detail in report.failure.detail


def test_zip_bomb_is_refused(tmp_path, keys):
    def bomb(p):
        with zipfile.ZipFile(p, "a", zipfile.ZIP_DEFLATED) as z:
            z.writestr("zeros.bin", b"\0" * (50 << 20))

    report, failed = verdict(unsafe_archive(tmp_path, keys, bomb), keys)
    assert failed == "safety" and "zip bomb" in report.failure.detail


def third_party(tmp_path, name, members: dict) -> Path:
    """An unsigned archive as torch-model-archiver would make it elsewhere."""
    path = tmp_path / f"{name}-1.0.mar"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("h.py", "class H:\n    pass\n")
        serialized = next(iter(members))
        z.writestr(
            "MAR-INF/MANIFEST.json",
            json.dumps(
                {"model": {"modelName": name, "modelVersion": "1.0", "handler": "h.py", "serializedFile": serialized}}
            ),
        )
        for member, data in members.items():
            z.writestr(member, data)
    return path


def test_pickles_that_run_code_are_refused(tmp_path, keys):
    import os

    (tmp_path / "h.py").write_text("class H:\n    pass\n")
    evil = tmp_path / "model.pt"
    evil.write_bytes(tamper.malicious_pickle())
    with pytest.raises(ArchiveError, match="refusing to package .*weights_only"):
        archiver.package(ArchiveSpec("evil", "1.0", tmp_path / "h.py", evil), tmp_path / "store", keys)
    assert not (tmp_path / "store" / "evil-1.0.mar").exists()

    # a third-party archive carrying one: refused even with --allow-unsigned
    report, failed = verdict(
        third_party(tmp_path, "evil", {"model.pt": tamper.malicious_pickle()}), keys, allow_unsigned=True
    )
    assert failed == "weights" and "weights_only" in report.failure.detail
    assert not os.path.exists("/tmp/torchship-pwned")  # nothing ran while checking
    report, failed = verdict(
        third_party(tmp_path, "plain", {"model.pt": torch_bytes(), "state.pkl": b"\x80\x04K\x01."}),
        keys,
        allow_unsigned=True,
    )
    assert failed == "weights" and "pickle" in report.failure.detail


def torch_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


def test_a_truncated_checkpoint_is_refused_before_packaging(mlp_run, tmp_path, keys):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArchiveError, match="past the end of the file"):
        archiver.package(example_spec("mlp", run, "1.0"), tmp_path / "store", keys)
    assert not (tmp_path / "store").exists() or list((tmp_path / "store").iterdir()) == []


def test_a_torch_file_that_loads_weights_only_is_accepted(tmp_path, keys):
    (tmp_path / "h.py").write_text("class H:\n    pass\n")
    torch.save({"w": torch.zeros(2, 2)}, tmp_path / "model.pt")
    path = archiver.package(
        ArchiveSpec("ok", "1.0", tmp_path / "h.py", tmp_path / "model.pt"), tmp_path / "s", keys
    ).path
    assert verdict(path, keys)[0].ok


def test_unsigned_third_party_archives_need_the_flag(tmp_path, keys):
    (tmp_path / "h.py").write_text("class H:\n    pass\n")
    with zipfile.ZipFile(tmp_path / "tp-1.0.mar", "w") as z:
        z.write(tmp_path / "h.py", "h.py")
        z.writestr(
            "MAR-INF/MANIFEST.json",
            json.dumps({"model": {"modelName": "tp", "modelVersion": "1.0", "handler": "h.py"}}),
        )
    assert verdict(tmp_path / "tp-1.0.mar", keys)[1] == "signature"
    report, failed = verdict(tmp_path / "tp-1.0.mar", keys, allow_unsigned=True)
    assert report.ok and [c.ok for c in report.checks if c.name in ("signature", "provenance")] == [None, None]
    with pytest.raises(VerificationError, match="not a readable zip"):
        (tmp_path / "junk-1.0.mar").write_bytes(b"junk")
        archiver.ensure_verified(tmp_path / "junk-1.0.mar", public_key=None, allow_unsigned=True)


def test_private_key_is_private(keys):
    assert (keys / "signing-key.pem").stat().st_mode & 0o077 == 0


def test_a_corrupt_archive_on_disk_is_refused_with_a_clear_reason(built, keys):
    data = bytearray(built.path.read_bytes())
    with zipfile.ZipFile(built.path) as z:
        info = z.getinfo("model.safetensors")
    data[info.header_offset + 200] ^= 0xFF  # inside the weights' data
    built.path.write_bytes(bytes(data))
    report, failed = verdict(built.path, keys)
    assert failed == "contents" and "corrupt" in report.failure.detail


def test_digest_recorded_by_training_is_reused_only_while_the_file_is_unchanged(mlp_run, tmp_path, keys):
    import hashlib
    import os

    from torchship.archiver.digests import recorded_digest

    weights = mlp_run / "model.safetensors"
    real = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert recorded_digest(weights) == real  # training recorded it

    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)  # a copy keeps the sidecar, but is another file: not trusted
    assert recorded_digest(run / "model.safetensors") is None
    built = archiver.package(example_spec("mlp", run, "1.0"), tmp_path / "s", keys)
    assert built.provenance["members"]["model.safetensors"]["sha256"] == real

    # a file changed behind the cache's back (same size and inode, mtime put back): refused later
    from torchship.archiver.digests import record_digest

    target = run / "model.safetensors"
    record_digest(target)
    st = target.stat()
    target.write_bytes(tamper.flip_byte(target.read_bytes()))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    stale = archiver.package(example_spec("mlp", run, "2.0"), tmp_path / "s", keys)
    report, failed = verdict(stale.path, keys)
    assert failed == "provenance" and "model.safetensors was modified" in report.failure.detail


# ------------------------------------------------------------------ every byte accounted for
# TorchServe unpacks with a streaming reader that walks local headers front to back; zipfile reads the
# central directory. Each attack below leaves an archive that zipfile reads without complaint.

HIDDEN_HANDLER = b"open('/tmp/torchship-hidden-ran', 'w').write('ran')\n"


@pytest.mark.parametrize(
    "case, attack, check, detail",
    [
        (
            "hidden entry",
            lambda p: zipcraft.hide_entry(p, "mlp_handler.py", HIDDEN_HANDLER),
            "layout",
            "no central record accounts for",
        ),
        (
            "hidden large entry",
            lambda p: zipcraft.hide_entry(p, "big.bin", b"\0" * (100 << 20), deflate=True),
            "layout",
            "no central record accounts for",
        ),
        (
            "data prepended",
            lambda p: zipcraft.prepend(p, b"#!/bin/sh\n" * 10, fix_offsets=False),
            "layout",
            "data prepended or inserted",
        ),
        (
            "data prepended, offsets fixed",
            lambda p: zipcraft.prepend(p, b"MZ" + b"\0" * 510, fix_offsets=True),
            "layout",
            "data prepended",
        ),
        (
            "local/central name mismatch",
            lambda p: zipcraft.rename_local(p, "meta.json", "evil.py__"),
            "layout",
            "disagrees with the central directory on name",
        ),
        (
            "duplicate names",
            lambda p: zipcraft.duplicate_member(p, "mlp_handler.py", HIDDEN_HANDLER),
            "layout",
            "duplicate member name",
        ),
        (
            "bytes appended",
            lambda p: zipcraft.append(p, b"PK\x03\x04" + b"\0" * 60),
            "layout",
            "does not end with a zip end record",
        ),
        ("zip comment", lambda p: zipcraft.comment(p, b"hello"), "layout", "comment"),
        ("data descriptor flag", lambda p: zipcraft.set_flag(p, "meta.json", 0x8), "layout", "data descriptor"),
        ("encrypted flag", lambda p: zipcraft.set_flag(p, "meta.json", 0x1), "layout", "encrypted"),
        (
            "bytes after a deflate stream",
            lambda p: zipcraft.stuff_after_deflate_end(
                p, "meta.json", zipcraft.local_entry("mlp_handler.py", HIDDEN_HANDLER)
            ),
            "contents",
            "hidden bytes",
        ),
    ],
)
def test_what_the_server_would_unpack_is_what_verify_checked(built, keys, case, attack, check, detail):
    attack(built.path)
    if case not in ("local/central name mismatch", "encrypted flag"):  # zipfile notices these two itself
        with zipfile.ZipFile(built.path) as z:  # the attack is invisible to a central-directory reader
            assert z.testzip() is None
    report, failed = verdict(built.path, keys)
    assert failed == check, report.to_dict()
    assert detail in report.failure.detail
    with pytest.raises(VerificationError, match=check):
        archiver.ensure_verified(built.path, public_key=archiver.public_key_path(keys))


def test_a_hidden_entry_would_otherwise_be_extracted_by_a_streaming_reader(built):
    """What the attack does to a reader that walks local headers (as TorchServe's does): the hidden
    handler is the one written last, over the signed one."""
    from torchship.archiver.layout import LOCAL_SIG

    zipcraft.hide_entry(built.path, "mlp_handler.py", HIDDEN_HANDLER)
    data = built.path.read_bytes()
    names, pos = [], 0
    while data[pos : pos + 4] == LOCAL_SIG:
        fields = zipcraft.LOCAL.unpack_from(data, pos)
        names.append(data[pos + 30 : pos + 30 + fields[9]].decode())
        pos += 30 + fields[9] + fields[10] + fields[7]
    assert names.count("mlp_handler.py") == 2 and names[-1] == "mlp_handler.py"
    with zipfile.ZipFile(built.path) as z:
        assert z.namelist().count("mlp_handler.py") == 1 and z.read("mlp_handler.py") != HIDDEN_HANDLER


def test_zip64_archives_as_python_writes_them_are_accepted(tmp_path, monkeypatch):
    """Large weights need Zip64: its end records and extra fields are parsed, not refused."""
    from torchship.archiver.layout import read_members, scan

    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)  # force Zip64 records on a small archive
    path = tmp_path / "big.zip"
    payloads = {"a.bin": b"a" * 1000, "b.txt": b"hello", "c/d.bin": bytes(range(256)) * 4}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, payload in payloads.items():
            z.writestr(name, payload)
        with z.open("e.bin", "w", force_zip64=True) as f:
            f.write(b"e" * 300)
    monkeypatch.undo()
    data = path.read_bytes()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data  # the Zip64 end records are really there
    with open(path, "rb") as f:
        entries = scan(f, len(data))
        digests = {e.name: d for e, d in read_members(f, entries)}
    import hashlib

    payloads["e.bin"] = b"e" * 300
    assert digests == {n: hashlib.sha256(p).hexdigest() for n, p in payloads.items()}


@pytest.mark.parametrize("name", ["caf\u00e9.py", "a\nb.py", "\x00.py"])
def test_member_names_outside_printable_ascii_are_refused(tmp_path, keys, name):
    """Java decodes names as UTF-8, Python as cp437 (without the UTF-8 flag): refuse what they could
    read differently, and control characters."""
    path = unsafe_archive(tmp_path, keys, lambda p: tamper.add_raw_member(p, zipfile.ZipInfo(name), b"x"))
    report, failed = verdict(path, keys)
    assert failed == "layout" and "printable ASCII" in report.failure.detail


def test_a_member_whose_size_lies_is_refused_without_inflating_a_bomb(tmp_path):
    """The declared size bounds what is inflated: a member claiming 10 bytes that inflates to 100 MiB
    stops after 11."""
    from torchship.archiver.layout import LayoutError, read_members, scan

    path = tmp_path / "liar.zip"
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = packer.compress(b"\0" * (100 << 20)) + packer.flush()
    entry = zipcraft.LOCAL.pack(b"PK\x03\x04", 20, 0, 8, 0, 0x21, 0, len(body), 10, 5, 0) + b"x.bin" + body
    central = (
        struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, 0, len(body), 10, 5, 0, 0, 0, 0, 0, 0)
        + b"x.bin"
    )
    path.write_bytes(entry + central + zipcraft.END.pack(b"PK\x05\x06", 0, 0, 1, 1, len(central), len(entry), 0))
    with open(path, "rb") as f:
        entries = scan(f, path.stat().st_size)
        with pytest.raises(LayoutError, match="more than its declared 10 bytes"):
            list(read_members(f, entries))


# ------------------------------------------------------------------ found by attacking verify


def small_zip(tmp_path, members: dict, *, name="x-1.0.mar", compression=zipfile.ZIP_STORED) -> Path:
    """A third-party-style archive: a MANIFEST and the given members (str name or ZipInfo -> bytes)."""
    path = tmp_path / name
    manifest = {"model": {"modelName": "x", "modelVersion": "1.0", "handler": "h.py"}}
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("h.py", b"x = 1\n")
        for member, data in members.items():
            z.writestr(member, data)
    return path


def refusal(path) -> tuple[str, str]:
    report = verify_archive(path, public_key=None, allow_unsigned=True)  # must not raise
    assert not report.ok
    return report.failure.name, report.failure.detail


def test_a_folder_entry_that_carries_data_is_refused(tmp_path):
    """The server makes a folder and never writes those bytes: hashed, signed, and hidden."""
    path = small_zip(tmp_path, {zipfile.ZipInfo("a/"): b"hidden payload"})
    assert refusal(path) == ("layout", "'a/' is a folder that carries 14 bytes of data (never extracted: hidden)")


@pytest.mark.parametrize(
    "members, check, detail",
    [
        ({"a": b"1", "a/b": b"2"}, "layout", "'a/b' lies inside 'a', which is a file"),
        ({"a/b": b"2", "a": b"1"}, "layout", "is a file and also the folder of another member"),
        ({"a": b"1", "a/b/c": b"2"}, "layout", "lies inside 'a', which is a file"),
        ({"a/.": b"1"}, "safety", "an empty or '.' step"),
        ({"a//b": b"1"}, "safety", "an empty or '.' step"),
        ({"x" * 300: b"1"}, "safety", "too long"),
    ],
)
def test_members_the_servers_unzip_would_fail_on_are_refused(tmp_path, members, check, detail):
    failed, why = refusal(small_zip(tmp_path, members))
    assert failed == check and detail in why


@pytest.mark.parametrize(
    "case",
    ["deep manifest", "manifest of the wrong shape", "empty torch file", "invalid UTF-8 name", "unknown zip version"],
)
def test_malformed_contents_are_a_refusal_never_a_traceback(tmp_path, case):
    if case == "deep manifest":
        path = tmp_path / "x-1.0.mar"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("MAR-INF/MANIFEST.json", b"[" * 5000)
    elif case == "manifest of the wrong shape":
        path = tmp_path / "x-1.0.mar"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("MAR-INF/MANIFEST.json", b'{"model": []}')
    elif case == "empty torch file":
        path = small_zip(tmp_path, {"w.pt": b""})
    elif case == "invalid UTF-8 name":
        path = small_zip(tmp_path, {"h\u00e9.py": b"x"})
        path.write_bytes(path.read_bytes().replace("h\u00e9.py".encode(), b"h\xff\xfe.py"))
    else:
        path = small_zip(tmp_path, {})
        data = bytearray(path.read_bytes())
        at = data.find(b"PK\x01\x02")
        data[at + 6 : at + 8] = struct.pack("<H", 64)  # "version needed": zipfile refuses to open it
        path.write_bytes(bytes(data))
    failed, why = refusal(path)
    assert failed and why


def test_small_members_that_compress_well_are_not_called_bombs(tmp_path):
    """A zero-filled tensor deflates over 200x; below 16 MiB a member is judged with the rest."""
    payload = b"\0" * (1 << 20)
    import random

    path = small_zip(
        tmp_path,
        {"zeros.bin": payload, "noise.bin": random.Random(0).randbytes(64 * 1024)},
        compression=zipfile.ZIP_DEFLATED,
    )
    report = verify_archive(path, public_key=None, allow_unsigned=True)
    assert [c.name for c in report.checks if c.ok][:4] == ["archive", "layout", "safety", "contents"]


def test_inflating_a_member_holds_one_block_at_a_time(tmp_path):
    """Memory stays bounded by the read block whatever the member's ratio (64 MiB of zeros here)."""
    import tracemalloc

    from torchship.archiver.layout import read_members, scan

    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (64 << 20))
    with open(path, "rb") as f:
        entries = scan(f, path.stat().st_size)
        tracemalloc.start()
        try:
            [(entry, digest)] = list(read_members(f, entries, block=1 << 20))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert entry.file_size == 64 << 20 and len(digest) == 64
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"
