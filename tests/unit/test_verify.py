"""Packaging security: reproducible builds, provenance, signatures, and every way to tamper refused."""

import base64
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import torch

import archiver
from archiver import ArchiveSpec, example_spec, verify_archive
from archiver.provenance import PROVENANCE_NAME
from tests.fixtures import tamper
from torchship.errors import ArchiveError, VerificationError


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
    assert [c.name for c in report.checks] == ["archive", "safety", "signature", "provenance", "identity", "weights"]
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
        prov["members"] = {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                           for n, d in members.items() if n != PROVENANCE_NAME}
        return {**members, PROVENANCE_NAME: json.dumps(prov).encode()}

    tamper.rewrite(path, change)


TAMPERS = {
    "weights byte": lambda m: {**m, "model.safetensors": tamper.flip_byte(m["model.safetensors"])},
    "handler": lambda m: {**m, "mlp_handler.py": m["mlp_handler.py"] + b"\nimport os; os.system('id')\n"},
    "manifest": lambda m: {**m, "MAR-INF/MANIFEST.json": m["MAR-INF/MANIFEST.json"].replace(b"mlp_handler.py",
                                                                                          b"evil_handler.py")},
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


@pytest.mark.parametrize("case, add, detail", [
    ("zip slip", lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("../../evil.py"), b"x"), "unsafe member path"),
    ("absolute", lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("/etc/cron.d/x"), b"x"), "unsafe member path"),
    ("backslash", lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("..\\evil.py"), b"x"), "unsafe member path"),
    ("symlink", lambda p: tamper.add_raw_member(p, tamper.symlink_info("link"), b"/etc/passwd"), "symbolic link"),
    ("duplicate", lambda p: tamper.add_raw_member(p, zipfile.ZipInfo("h.py"), b"x"), "duplicate"),
])
def test_unsafe_members_are_refused(tmp_path, keys, case, add, detail):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        path = unsafe_archive(tmp_path, keys, add)
    report, failed = verdict(path, keys)
    assert failed == "safety" and detail in report.failure.detail


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
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": name, "modelVersion": "1.0",
                                                                  "handler": "h.py", "serializedFile": serialized}}))
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
    report, failed = verdict(third_party(tmp_path, "evil", {"model.pt": tamper.malicious_pickle()}), keys,
                             allow_unsigned=True)
    assert failed == "weights" and "weights_only" in report.failure.detail
    assert not os.path.exists("/tmp/torchship-pwned")  # nothing ran while checking
    report, failed = verdict(third_party(tmp_path, "plain", {"model.pt": torch_bytes(), "state.pkl": b"\x80\x04K\x01."}),
                             keys, allow_unsigned=True)
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
    path = archiver.package(ArchiveSpec("ok", "1.0", tmp_path / "h.py", tmp_path / "model.pt"), tmp_path / "s", keys).path
    assert verdict(path, keys)[0].ok


def test_unsigned_third_party_archives_need_the_flag(tmp_path, keys):
    (tmp_path / "h.py").write_text("class H:\n    pass\n")
    with zipfile.ZipFile(tmp_path / "tp-1.0.mar", "w") as z:
        z.write(tmp_path / "h.py", "h.py")
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "tp", "modelVersion": "1.0", "handler": "h.py"}}))
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
    assert failed == "provenance" and "corrupt" in report.failure.detail


def test_digest_recorded_by_training_is_reused_only_while_the_file_is_unchanged(mlp_run, tmp_path, keys):
    import hashlib
    import os

    from archiver.digests import recorded_digest

    weights = mlp_run / "model.safetensors"
    real = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert recorded_digest(weights) == real  # training recorded it

    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)  # a copy keeps the sidecar, but is another file: not trusted
    assert recorded_digest(run / "model.safetensors") is None
    built = archiver.package(example_spec("mlp", run, "1.0"), tmp_path / "s", keys)
    assert built.provenance["members"]["model.safetensors"]["sha256"] == real

    # a file changed behind the cache's back (same size and inode, mtime put back): refused later
    from archiver.digests import record_digest

    target = run / "model.safetensors"
    record_digest(target)
    st = target.stat()
    target.write_bytes(tamper.flip_byte(target.read_bytes()))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    stale = archiver.package(example_spec("mlp", run, "2.0"), tmp_path / "s", keys)
    report, failed = verdict(stale.path, keys)
    assert failed == "provenance" and "model.safetensors was modified" in report.failure.detail
