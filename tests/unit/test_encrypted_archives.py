"""Weights encrypted at rest: packaging, verification, variants and model key rotation (no server).

The serving side (the worker decrypting at load, on a real server) is tests/integration/test_encryption*.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import save_file

from tests.fixtures import tamper
from torchship import Project, archiver
from torchship import errors as E
from torchship.archiver.derive import derive
from torchship.archiver.model_keys import load_keyring, rotate_keyring
from torchship.archiver.provenance import PROVENANCE_NAME
from torchship.cli import main
from torchship.handlers import torchship_crypto

from .test_checkpoint import OWN_MODEL, own_net

SEALED = "model.safetensors.tsenc"
KEYS = "torchship-keys.json"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "config.properties").write_text("model_store=model_store\n")
    monkeypatch.setenv("TORCHSHIP_HOME", str(root))
    monkeypatch.chdir(root)
    with Project(root) as p:
        yield p


@pytest.fixture
def sealed(project, mlp_run):
    """An encrypted mlp archive of the project."""
    return project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def keyring_of(project: Project) -> Path:
    return archiver.keyring_path(project.key_dir)


def refusal(project: Project, path: Path, **kw) -> tuple[str, str]:
    report = project.verify(path, **kw)
    assert not report.ok
    return report.failure.name, report.failure.detail


def resign(project: Project, path: Path, change) -> None:
    """What a holder of the signing key could do: change members, make the provenance match, sign it."""

    def forged(m):
        m = change(dict(m))
        prov = json.loads(m[PROVENANCE_NAME])
        prov["members"] = {
            n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in m.items() if n != PROVENANCE_NAME
        }
        return {**m, PROVENANCE_NAME: json.dumps(prov).encode()}

    tamper.rewrite(path, forged)
    archiver.sign(path, project.key_dir)


# ------------------------------------------------------------------ packaging


def test_encrypted_archive_layout_manifest_keys_member_and_provenance(project, sealed, mlp_run):
    m = members(sealed.path)
    assert "model.safetensors" not in m and {SEALED, KEYS, "torchship_crypto.py", "mlp_handler.py"} <= set(m)
    manifest = json.loads(m["MAR-INF/MANIFEST.json"])["model"]
    assert manifest["serializedFile"] == SEALED
    ring = load_keyring(keyring_of(project))
    keys = json.loads(m[KEYS])
    assert keys["format"] == "torchship-keys/1" and set(keys["members"]) == {SEALED}
    entry = keys["members"][SEALED]
    assert set(entry) == {"key_id", "wrapped_key"} and entry["key_id"] == ring.current
    plaintext = (mlp_run / "model.safetensors").read_bytes()
    prov = sealed.provenance
    assert prov["weights"] == SEALED
    record = prov["encryption"]["members"][SEALED]
    assert record == {
        "cipher": "AES-256-GCM",
        "chunk_size": 4 << 20,
        "chunks": 1,
        "key_id": ring.current,
        "key_wrap": "AES-KW (RFC 3394)",
        "plaintext": {
            "name": "model.safetensors",
            "size": len(plaintext),
            "sha256": hashlib.sha256(plaintext).hexdigest(),
        },
    }
    # like every member, the provenance pins the ciphertext: the signature covers it
    assert prov["members"][SEALED] == {"sha256": hashlib.sha256(m[SEALED]).hexdigest(), "size": len(m[SEALED])}
    assert prov["members"][KEYS]["sha256"] == hashlib.sha256(m[KEYS]).hexdigest()
    # the data key is the one derived from the model key, the archive and the plaintext
    data_key = torchship_crypto.unwrap(ring.current_key, entry["wrapped_key"])
    assert data_key == torchship_crypto.data_key(
        ring.current_key,
        name="mlp",
        version="1.0",
        header=torchship_crypto.member_header("model.safetensors", len(plaintext)),
        plaintext_sha256=record["plaintext"]["sha256"],
    )
    assert project.registry.archive("mlp", "1.0").digest == sealed.digest


def test_the_weights_member_is_not_readable_as_safetensors_and_holds_no_plaintext(sealed, mlp_run):
    from safetensors.torch import load

    m = members(sealed.path)
    with pytest.raises(Exception):  # noqa: B017  safetensors raises its own error kinds
        load(m[SEALED])
    plaintext = (mlp_run / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(plaintext[:8], "little")
    whole = sealed.path.read_bytes()
    for at in range(header, len(plaintext) - 64, 1024):  # no 64-byte run of the tensors' bytes anywhere
        assert plaintext[at : at + 64] not in whole
    assert plaintext[8:header] not in whole  # nor the tensor names and shapes


def test_same_key_checkpoint_name_and_version_give_a_byte_identical_archive(project, sealed, mlp_run):
    first = sealed.path.read_bytes()
    ciphertext = members(sealed.path)[SEALED]
    again = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True, force=True)
    assert again.path.read_bytes() == first and again.digest == sealed.digest
    # another version (or another key) is another data key: other ciphertext
    other = project.package("mlp", version="2.0", checkpoint=mlp_run, encrypt=True)
    assert members(other.path)[SEALED] != ciphertext
    rotate_keyring(keyring_of(project))
    rekeyed = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True, force=True)
    assert members(rekeyed.path)[SEALED] != ciphertext


def test_the_keyring_is_made_private_on_first_use_and_reused(project, mlp_run):
    result = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True)
    path = keyring_of(project)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert any("made the project's model keyring" in n for n in result.notes)
    before = path.read_bytes()
    again = project.package("mlp", version="2.0", checkpoint=mlp_run, encrypt=True)
    assert path.read_bytes() == before and not any("keyring" in n for n in again.notes)


def test_a_keyring_that_others_can_read_is_refused(project, mlp_run):
    project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True)
    os.chmod(keyring_of(project), 0o644)
    with pytest.raises(E.ArchiveError, match="chmod 600"):
        project.package("mlp", version="2.0", checkpoint=mlp_run, encrypt=True)


def test_a_named_keyring_file_is_used_instead_of_the_projects(project, mlp_run, tmp_path):
    own = tmp_path / "mine.json"
    kid = "mk-0000beef"
    own.write_text(torchship_crypto.keyring_text(kid, {kid: os.urandom(32)}))
    os.chmod(own, 0o600)
    result = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True, model_key=own)
    assert result.provenance["encryption"]["members"][SEALED]["key_id"] == kid
    assert not keyring_of(project).exists()
    weights = project.verify(result.path, model_key=own).checks[-1]
    assert weights.ok and "decrypted" in weights.detail
    with pytest.raises(E.BadInput, match="--encrypt"):
        project.package("mlp", version="2.0", checkpoint=mlp_run, model_key=own)


def test_weights_that_are_not_safetensors_are_refused_with_one_line(project, tmp_path):
    import torch

    pt = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    with pytest.raises(E.ArchiveError, match=r"refusing to encrypt x.pt: torchship encrypts safetensors weights only"):
        project.package("own", version="1.0", handler=OWN_MODEL / "handler.py", weights=pt, encrypt=True)
    assert not keyring_of(project).exists() and not list(project.store.glob("*.mar"))


def test_a_handler_of_your_own_is_encrypted_with_the_crypto_module_beside_it(project, tmp_path):
    weights = tmp_path / "x.safetensors"
    save_file(own_net().state_dict(), str(weights))
    result = project.package(
        "own",
        version="1.0",
        handler=OWN_MODEL / "handler.py",
        model_file=OWN_MODEL / "model.py",
        weights=weights,
        encrypt=True,
    )
    m = members(result.path)
    assert {"x.safetensors.tsenc", KEYS, "torchship_crypto.py", "torchship_base_handler.py"} <= set(m)
    assert "x.safetensors" not in m
    assert json.loads(m["MAR-INF/MANIFEST.json"])["model"]["serializedFile"] == "x.safetensors.tsenc"
    assert project.verify(result.path).ok
    # the same handler packaged plain: no crypto module, and the import check still passes
    plain = project.package(
        "own", version="2.0", handler=OWN_MODEL / "handler.py", model_file=OWN_MODEL / "model.py", weights=weights
    )
    assert "torchship_crypto.py" not in members(plain.path) and "x.safetensors" in members(plain.path)


def test_torchship_yaml_encrypt_true_encrypts_and_a_wrong_type_is_refused(project, mlp_run):
    from torchship import checkpoint

    from .test_checkpoint import ARCHITECTURE

    for name in ("handler.py", "model.py"):
        shutil.copy(OWN_MODEL / name, project.root / name)
    record = "models:\n  my-model:\n    handler: handler.py\n    model_file: model.py\n    checkpoints: ck/my-model\n"
    (project.root / "torchship.yaml").write_text(record + "    encrypt: true\n")
    run = checkpoint.new_run(project.root / "ck", "my-model")
    checkpoint.save(own_net(), run, name="my-model", architecture=ARCHITECTURE, metrics={}, seed=0)
    result = project.package("my-model", version="1.0")
    assert "encryption" in result.provenance and "model.safetensors.tsenc" in members(result.path)
    (project.root / "torchship.yaml").write_text(record + "    encrypt: 'yes'\n")
    with pytest.raises(E.ConfigError, match=r"models.my-model.encrypt: expected true or false"):
        project.package("my-model", version="2.0")


def test_the_worker_decrypts_the_archive_in_memory_and_answers_as_the_plain_one(sealed, project, tmp_path, monkeypatch):
    """The packaging side's half of the contract with the handler base (the server's half: integration tests)."""
    import importlib
    import sys

    from ts.utils.util import list_classes_from_module

    from tests.unit.handler_context import make_context, run_batch

    answers = []
    monkeypatch.setenv(torchship_crypto.KEYRING_ENV, str(keyring_of(project)))
    for label, path in (
        ("plain", project.package("mlp", version="2.0", checkpoint=sealed.checkpoint).path),
        ("sealed", sealed.path),
    ):
        folder = tmp_path / label
        zipfile.ZipFile(path).extractall(folder)
        manifest = json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text())["model"]
        monkeypatch.syspath_prepend(str(folder))
        for module in (
            "mlp_handler",
            "torchship_base_handler",
            "torchship_capture",
            "torchship_models",
            "torchship_oip",
            "torchship_signals",
            "torchship_crypto",
        ):
            monkeypatch.delitem(sys.modules, module, raising=False)  # imported from this archive, as a worker does
        handler = list_classes_from_module(importlib.import_module("mlp_handler"))[0]()
        handler.initialize(make_context(folder, manifest["serializedFile"]))
        answers.append(run_batch(handler, [json.dumps({"data": [0.25] * 100})])[1])
    assert answers[0] == answers[1]
    assert not list((tmp_path / "sealed").rglob("*.safetensors"))  # nothing decrypted to disk


# ------------------------------------------------------------------ verification


def test_verify_without_a_key_checks_the_ciphertext_and_says_it_did_not_decrypt(project, sealed):
    os.rename(keyring_of(project), keyring_of(project).with_suffix(".away"))
    report = project.verify(sealed.path)
    assert report.ok
    checks = {c.name: c for c in report.checks}
    kid = sealed.provenance["encryption"]["members"][SEALED]["key_id"]
    assert checks["encryption"].ok and "keys member, headers and sizes as the provenance records" in (
        checks["encryption"].detail
    )
    assert (
        checks["weights"].detail
        == f"{SEALED}: encrypted (AES-256-GCM, key {kid}, 1 chunk); not decrypted: no model key"
    )
    # deploy's check: an encrypted archive passes it on the project's machine
    archiver.ensure_verified(sealed.path, public_key=project.public_key)


def test_verify_with_the_projects_keyring_decrypts_and_checks_the_weights(project, sealed):
    report = project.verify(sealed.path)
    assert report.ok and [c.name for c in report.checks][-2:] == ["encryption", "weights"]
    assert "decrypted" in report.checks[-1].detail and "authenticated" in report.checks[-1].detail


def test_a_plain_archive_verifies_as_before(project, mlp_run):
    report = project.verify(project.package("mlp", version="1.0", checkpoint=mlp_run).path)
    assert report.ok and "encryption" not in [c.name for c in report.checks]


def test_a_wrong_key_fails_verify_with_its_own_message(project, sealed, tmp_path, capsys):
    kid = sealed.provenance["encryption"]["members"][SEALED]["key_id"]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(torchship_crypto.keyring_text(kid, {kid: os.urandom(32)}))  # the same id, another key
    os.chmod(wrong, 0o600)
    assert refusal(project, sealed.path, model_key=wrong) == (
        "weights",
        f"{SEALED}: model key {kid} of {wrong} does not open this archive's data key: a wrong key under that id",
    )
    other = tmp_path / "other.json"
    other.write_text(torchship_crypto.keyring_text("mk-00000001", {"mk-00000001": os.urandom(32)}))
    os.chmod(other, 0o600)
    name, detail = refusal(project, sealed.path, model_key=other)
    assert name == "weights" and f"encrypted under model key {kid}, which the keyring {other} does not hold" in detail
    assert main(["verify", str(sealed.path), "--model-key", str(wrong)]) == 8
    assert "a wrong key under that id" in capsys.readouterr().err


def test_a_flipped_ciphertext_byte_fails_verify_with_its_own_message(project, sealed):
    def flip(m):
        return {**m, SEALED: tamper.flip_byte(m[SEALED])}

    copy = sealed.path.read_bytes()
    tamper.rewrite(sealed.path, flip)
    assert refusal(project, sealed.path) == (
        "provenance",
        f"{SEALED} was modified (sha256 differs from the provenance)",
    )
    # even signed (a signer's mistake, or a stolen signing key), the cipher's own tags refuse it
    sealed.path.write_bytes(copy)
    resign(project, sealed.path, flip)
    assert refusal(project, sealed.path) == (
        "weights",
        f"{SEALED}: chunk 0 of 1 of {SEALED} fails authentication: the archive was altered or damaged",
    )


def test_a_missing_keys_entry_fails_verify_with_its_own_message(project, sealed):
    def drop_entry(m):
        doc = json.loads(m[KEYS])
        doc["members"] = {"other.safetensors.tsenc": doc["members"][SEALED]}
        return {**m, KEYS: json.dumps(doc).encode()}

    resign(project, sealed.path, drop_entry)
    assert refusal(project, sealed.path) == (
        "encryption",
        f"{SEALED} is encrypted but {KEYS} has no key for it (missing keys entry)",
    )


def test_a_missing_keys_member_and_a_cut_member_are_refused_without_a_key(project, sealed):
    copy = sealed.path.read_bytes()
    resign(project, sealed.path, lambda m: {k: v for k, v in m.items() if k != KEYS})
    assert refusal(project, sealed.path) == (
        "encryption",
        f"{SEALED} is encrypted but the archive has no {KEYS}: no key could open it",
    )
    sealed.path.write_bytes(copy)

    def cut(m):
        return {**m, SEALED: m[SEALED][:-16]}

    resign(project, sealed.path, cut)
    name, detail = refusal(project, sealed.path)
    assert name == "encryption" and "cut short or padded" in detail


def test_verify_streams_many_chunks_one_at_a_time(project, tmp_path):
    import torch

    big = tmp_path / "big.safetensors"
    save_file({"w": torch.arange(9 * 2**20 // 4, dtype=torch.float32)}, str(big))  # 9 MiB: 3 chunks
    spec = archiver.ArchiveSpec("big", "1.0", OWN_MODEL / "handler.py", big)
    path, _ = archiver.ensure_keyring(project.key_dir)
    result = archiver.package(spec, project.store, project.key_dir, model_key=load_keyring(path))
    assert result.provenance["encryption"]["members"]["big.safetensors.tsenc"]["chunks"] == 3
    assert project.verify(result.path).ok

    def flip_second_chunk(m):
        return {**m, "big.safetensors.tsenc": tamper.flip_byte(m["big.safetensors.tsenc"], 6 << 20)}

    resign(project, result.path, flip_second_chunk)
    assert "chunk 1 of 3 of big.safetensors.tsenc fails authentication" in refusal(project, result.path)[1]


# ------------------------------------------------------------------ variants (tune's thread copies)


def test_a_variant_of_an_encrypted_archive_stays_encrypted_and_opens(project, sealed):
    variant = derive(
        sealed.path,
        project.store,
        project.key_dir,
        name="mlp",
        version="1.0-t2",
        config={"handler": {"threads": 2}},
    )
    src, out = members(sealed.path), members(variant.path)
    assert out[SEALED] == src[SEALED] and out[KEYS] == src[KEYS] and "model.safetensors" not in out
    assert variant.provenance["encryption"] == sealed.provenance["encryption"]
    assert json.loads(out["MAR-INF/MANIFEST.json"])["model"]["serializedFile"] == SEALED
    report = project.verify(variant.path)
    assert report.ok and "decrypted" in report.checks[-1].detail


# ------------------------------------------------------------------ rotation


def test_rotation_rewraps_without_touching_the_ciphertext_and_keeps_the_old_key(project, sealed, capsys):
    before = members(sealed.path)
    old_copy = sealed.path.read_bytes()
    old_sig = archiver.signature_path(sealed.path).read_bytes()
    old = load_keyring(keyring_of(project)).current
    assert main(["keys", "rotate-model-key"]) == 0
    out = capsys.readouterr().out
    ring = load_keyring(keyring_of(project))
    assert ring.current != old and old in ring.keys  # the old key stays: old copies keep opening
    assert f"mlp-1.0.mar  {old}  {ring.current}" in out
    after = members(sealed.path)
    assert after[SEALED] == before[SEALED]  # the weights were not re-encrypted
    assert {k: v for k, v in after.items() if k not in (KEYS, PROVENANCE_NAME)} == {
        k: v for k, v in before.items() if k not in (KEYS, PROVENANCE_NAME)
    }
    assert json.loads(after[KEYS])["members"][SEALED]["key_id"] == ring.current
    prov = json.loads(after[PROVENANCE_NAME])
    assert prov["encryption"]["members"][SEALED]["key_id"] == ring.current
    # re-signed, it verifies and decrypts with the new key; the registry has its new digest
    report = project.verify(sealed.path)
    assert report.ok and ring.current in report.checks[-1].detail
    digest = "sha256:" + hashlib.sha256(after[PROVENANCE_NAME]).hexdigest()
    assert project.registry.archive("mlp", "1.0").digest == digest != sealed.digest
    assert project.registry.events("mlp")[0].kind == "rekeyed"
    # a copy made before the rotation, with its signature, still verifies and opens with the keyring
    elsewhere = project.root / "backup"
    elsewhere.mkdir()
    (elsewhere / "mlp-1.0.mar").write_bytes(old_copy)
    (elsewhere / "mlp-1.0.mar.sig").write_bytes(old_sig)
    report = project.verify(elsewhere / "mlp-1.0.mar")
    assert report.ok and old in report.checks[-1].detail and "decrypted" in report.checks[-1].detail


def test_retiring_a_key_that_an_archive_uses_is_refused(project, sealed, capsys):
    old, new = rotate_keyring(keyring_of(project))  # a new current key; the archive still uses the old one
    with pytest.raises(
        E.ArchiveError, match=rf"model key {old} still wraps 1 archive\(s\) of the store \(mlp-1.0.mar\)"
    ):
        project.retire_model_key(old)
    with pytest.raises(E.ArchiveError, match="is the current model key"):
        project.retire_model_key(new)
    assert old in load_keyring(keyring_of(project)).keys
    # rotating rewraps the archive; then the old keys can go
    assert main(["keys", "rotate-model-key", "--retire", old, "--retire", new]) == 0
    assert f"retired {old}" in capsys.readouterr().out
    ring = load_keyring(keyring_of(project))
    assert old not in ring.keys and new not in ring.keys
    assert project.verify(sealed.path).ok


def test_an_archive_that_fails_verification_is_not_rewrapped_nor_resigned(project, sealed, mlp_run, capsys):
    good = project.package("mlp", version="2.0", checkpoint=mlp_run, encrypt=True)
    tamper.rewrite(sealed.path, lambda m: {**m, "mlp_handler.py": m["mlp_handler.py"] + b"\n# evil\n"})
    tampered = sealed.path.read_bytes()
    assert main(["keys", "rotate-model-key"]) == 8
    err = capsys.readouterr().err
    assert "mlp-1.0.mar not rewrapped" in err and "failed verification (provenance)" in err
    assert sealed.path.read_bytes() == tampered  # never re-signed: re-signing would launder it
    assert project.verify(good.path).ok


def test_keys_list_shows_ids_current_and_archives(project, sealed, capsys):
    old = load_keyring(keyring_of(project)).current
    assert main(["keys", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"key_id": old, "current": True, "in_keyring": True, "archives": ["mlp-1.0.mar"]}
    ]
    rotate_keyring(keyring_of(project))
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{old}" in out and "mlp-1.0.mar" in out


def test_no_command_prints_a_model_key(project, mlp_run, capsys, tmp_path):
    outputs = []

    def run(*args):
        main(list(args))
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)

    run("package", "mlp", "--version", "1.0", "--checkpoint", str(mlp_run), "--encrypt")
    run("verify", "model_store/mlp-1.0.mar")
    run("verify", "model_store/mlp-1.0.mar", "--json")
    run("keys", "list")
    run("keys", "list", "--json")
    run("keys", "rotate-model-key")
    run("keys", "rotate-model-key", "--json")
    run("package", "mlp", "--version", "2.0", "--checkpoint", str(mlp_run), "--encrypt")
    os.chmod(keyring_of(project), 0o644)
    run("package", "mlp", "--version", "3.0", "--checkpoint", str(mlp_run), "--encrypt")  # refused
    os.chmod(keyring_of(project), 0o600)
    run("keys", "rotate-model-key", "--retire", "mk-nosuchkey")  # refused
    secrets = []
    for key in load_keyring(keyring_of(project)).keys.values():
        secrets += [base64.b64encode(key).decode(), key.hex(), base64.b64encode(key).decode()[:16]]
    text = "\n".join(outputs)
    assert "mk-" in text and "chmod 600" in text and "no key mk-nosuchkey" in text
    assert not [s for s in secrets if s in text]
    assert keyring_of(project).read_text() not in text


def test_a_forged_header_cannot_make_the_worker_reserve_memory(tmp_path):
    """The header names the plaintext's size before any chunk is authenticated: the worker checks
    it against the member's real size before it allocates the buffer."""
    import io
    import struct

    key = torchship_crypto.new_key()
    sealed = io.BytesIO()
    torchship_crypto.encrypt_stream(io.BytesIO(b"w" * 1000).read, sealed.write, key, size=1000, plaintext_name="m")
    fields = {"cipher": "AES-256-GCM", "chunk_size": 4 << 20, "format": 1, "plaintext": "m", "size": 1 << 40}
    header = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    forged = torchship_crypto.MAGIC + struct.pack(">I", len(header)) + header + sealed.getvalue()[-1016:]
    (tmp_path / "model.safetensors.tsenc").write_bytes(forged)
    entry = {"key_id": "mk-00000001", "wrapped_key": torchship_crypto.wrap(key, key)}
    (tmp_path / torchship_crypto.KEYS_MEMBER).write_text(json.dumps({"members": {"model.safetensors.tsenc": entry}}))
    keyring = tmp_path / "keys.json"
    keyring.write_text(torchship_crypto.keyring_text("mk-00000001", {"mk-00000001": key}))
    with pytest.raises(torchship_crypto.ModelKeyError, match="sizes do not match the member's"):
        torchship_crypto.open_member(tmp_path, "model.safetensors.tsenc", keyring)


# ------------------------------------------------------------------ review: nonce reuse, stale digests, layout


def test_the_data_key_differs_with_every_field_and_never_repeats_a_nonce(project, mlp_run, tmp_path):
    """A data key is shared only by members with the same name, version, header and plaintext, so a
    (key, nonce) pair never seals two messages (GCM nonce reuse would leak the tag key)."""
    key = torchship_crypto.new_key()
    base = {"name": "mlp", "version": "a-1.0", "header": torchship_crypto.member_header("m.safetensors", 10)}
    sha = "0" * 64
    same = torchship_crypto.data_key(key, **base, plaintext_sha256=sha)
    assert same == torchship_crypto.data_key(key, **base, plaintext_sha256=sha)  # reproducible
    others = [
        {**base, "name": "mlp-a", "version": "1.0"},  # the old "name-version" encoding made these equal
        {**base, "name": "mlp", "version": "a-1.0\0"},
        {**base, "header": torchship_crypto.member_header("n.safetensors", 10)},
        {**base, "header": torchship_crypto.member_header("m.safetensors", 11)},
        {**base, "header": torchship_crypto.member_header("m.safetensors", 10, 1 << 20)},
    ]
    keys = {same, torchship_crypto.data_key(key, **base, plaintext_sha256="1" * 64)}
    keys |= {torchship_crypto.data_key(key, **o, plaintext_sha256=sha) for o in others}
    assert len(keys) == len(others) + 2
    # r04: the same bytes and name-version under two file names (the AAD differs): two data keys
    weights = (mlp_run / "model.safetensors").read_bytes()
    ring = None
    wrapped = []
    for stem in ("wa", "wb"):
        folder = tmp_path / stem
        folder.mkdir()
        (folder / f"{stem}.safetensors").write_bytes(weights)
        result = project.package(
            "own",
            version="1.0",
            handler=OWN_MODEL / "handler.py",
            model_file=OWN_MODEL / "model.py",
            weights=folder / f"{stem}.safetensors",
            encrypt=True,
            force=True,
        )
        ring = ring or load_keyring(keyring_of(project))
        entry = json.loads(members(result.path)[KEYS])["members"][f"{stem}.safetensors.tsenc"]
        wrapped.append(torchship_crypto.unwrap(ring.current_key, entry["wrapped_key"]))
    assert wrapped[0] != wrapped[1]


def test_a_stale_recorded_digest_is_refused_and_nothing_is_written(project, mlp_run, tmp_path):
    """r13: weights rewritten in place (same size, mtime put back) keep their sidecar record; the
    bytes encrypted are hashed anyway, and packaging refuses rather than reuse the old data key."""
    import io

    from safetensors.torch import load_file

    from torchship.archiver.digests import record_digest

    def members_from(data: bytes) -> dict[str, bytes]:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {i.filename: z.read(i) for i in z.infolist()}

    ring = load_keyring(keyring_of(project)) if keyring_of(project).exists() else None

    ckpt = tmp_path / "ckpt"
    shutil.copytree(mlp_run, ckpt)
    weights = ckpt / "model.safetensors"
    record_digest(weights)
    first = project.package("mlp", version="1.0", checkpoint=ckpt, encrypt=True)
    before = first.path.read_bytes()
    ring = ring or load_keyring(keyring_of(project))
    st = weights.stat()
    changed = tmp_path / "changed.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(str(weights)).items()}, str(changed))
    with open(weights, "r+b") as f:  # same inode, same size
        f.write(changed.read_bytes())
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size == st.st_size and weights.stat().st_ino == st.st_ino
    with pytest.raises(E.ArchiveError, match=r"not the file its data key was derived for: its sha256 recorded in"):
        project.package("mlp", version="1.0", checkpoint=ckpt, encrypt=True, force=True)
    assert first.path.read_bytes() == before  # nothing written, no temporary left
    assert sorted(x.name for x in project.store.iterdir() if x.name.endswith(".tmp")) == []
    # without the stale record the new bytes package (under a data key of their own)
    (ckpt / ".torchship-digests.json").unlink()
    again = project.package("mlp", version="1.0", checkpoint=ckpt, encrypt=True, force=True)
    assert project.verify(again.path).ok
    old_key, new_key = (
        torchship_crypto.unwrap(ring.current_key, json.loads(members_of[KEYS])["members"][SEALED]["wrapped_key"])
        for members_of in (members_from(before), members(again.path))
    )
    assert old_key != new_key


def _aliased(raw: bytes) -> bytes:
    """r03: fc2.bias's offsets point into fc1.bias's bytes (its own become a gap), data in place."""
    import struct

    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header["fc2.bias"]["data_offsets"] = [
        0,
        header["fc2.bias"]["data_offsets"][1] - header["fc2.bias"]["data_offsets"][0],
    ]
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", n) + h + b" " * (n - len(h)) + raw[8 + n :]


def test_one_safetensors_layout_check_for_the_worker_package_and_verify(project, sealed, mlp_run, tmp_path):
    """r03: weights whose tensors alias each other are refused by package (plain and encrypted), by
    verify once decrypted (a key holder's forgery), and by the worker, all with the same check."""
    import io
    import struct

    bad = tmp_path / "bad"
    shutil.copytree(mlp_run, bad)
    (bad / ".torchship-digests.json").unlink(missing_ok=True)
    plaintext = _aliased((mlp_run / "model.safetensors").read_bytes())
    (bad / "model.safetensors").write_bytes(plaintext)
    for encrypt in (False, True):
        with pytest.raises(E.ArchiveError, match="overlaps another or leaves a gap"):
            project.package("mlp", version="3.0", checkpoint=bad, encrypt=encrypt)
    # a key holder re-encrypts the aliased weights under the archive's own data key and re-signs
    ring = load_keyring(keyring_of(project))
    entry = json.loads(members(sealed.path)[KEYS])["members"][SEALED]
    key = torchship_crypto.unwrap(ring.current_key, entry["wrapped_key"])
    out = io.BytesIO()
    torchship_crypto.encrypt_stream(
        io.BytesIO(plaintext).read, out.write, key, size=len(plaintext), plaintext_name="model.safetensors"
    )

    def swap(m):
        prov = json.loads(m[PROVENANCE_NAME])
        prov["encryption"]["members"][SEALED]["plaintext"]["sha256"] = hashlib.sha256(plaintext).hexdigest()
        return {**m, SEALED: out.getvalue(), PROVENANCE_NAME: json.dumps(prov).encode()}

    resign(project, sealed.path, swap)
    name, detail = refusal(project, sealed.path)
    assert name == "weights" and "decrypted model.safetensors: safetensors entry" in detail
    assert "overlaps another or leaves a gap" in detail
    # the worker's own parser refuses the same bytes
    header, problem = torchship_crypto.safetensors_header(plaintext, len(plaintext))
    assert header is None and problem and "overlaps" in problem
    n = struct.unpack("<Q", plaintext[:8])[0]
    assert torchship_crypto.safetensors_layout_problem(json.loads(plaintext[8 : 8 + n]), len(plaintext) - 8 - n)


def test_deep_headers_and_tiny_chunks_are_clear_refusals(project, tmp_path):
    """r10: a 2 KB safetensors nested 1000 deep is a refusal, not an internal error; an encrypted
    member's chunk size must be 64 KiB..64 MiB (a tiny one would multiply decryption's cost)."""
    import io
    import struct

    from torchship.archiver.verify import weights_problem

    deep = tmp_path / "deep.safetensors"
    header = b"[" * 1000 + b"]" * 1000
    deep.write_bytes(struct.pack("<Q", len(header)) + header)
    assert weights_problem(deep) == "safetensors header is JSON nested too deeply"
    with pytest.raises(E.ArchiveError, match="nested too deeply"):
        project.package("deep", version="1.0", handler=OWN_MODEL / "handler.py", weights=deep)

    key = torchship_crypto.new_key()
    with pytest.raises(ValueError, match="chunk size 1 is not between"):
        torchship_crypto.encrypt_stream(
            io.BytesIO(b"x").read, io.BytesIO().write, key, size=1, plaintext_name="m", chunk=1
        )
    for chunk, ok in ((64 << 10, True), ((64 << 10) - 1, False), (64 << 20, True), ((64 << 20) + 1, False)):
        raw = torchship_crypto.member_header("m", 10, chunk)
        sealed = torchship_crypto.MAGIC + struct.pack(">I", len(raw)) + raw
        if ok:
            assert torchship_crypto.read_header(io.BytesIO(sealed).read)[1]["chunk_size"] == chunk
        else:
            with pytest.raises(torchship_crypto.ModelKeyError, match="not one torchship writes"):
                torchship_crypto.read_header(io.BytesIO(sealed).read)


def test_tunes_repackage_hint_keeps_an_archive_encrypted(project, sealed, mlp_run):
    from torchship.project import repackage_hint

    plain = project.package("mlp", version="2.0", checkpoint=mlp_run)
    assert repackage_hint(sealed.path, "mlp", 1) is None  # already one thread: nothing to do
    assert repackage_hint(sealed.path, "mlp", 2) == "torchship package mlp --threads 2 --encrypt"
    assert repackage_hint(plain.path, "mlp", 2) == "torchship package mlp --threads 2"
