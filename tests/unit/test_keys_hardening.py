"""Model keyrings and key rotation under pressure (no server): retiring a key something still needs,
keyrings that are links or malformed, rotation interrupted half way, deploy's keyed verification, and
the export's Secret kept out of git."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.fixtures import tamper
from torchship import Project, archiver
from torchship import errors as E
from torchship.archiver.model_keys import load_keyring, rotate_keyring
from torchship.archiver.provenance import PROVENANCE_NAME
from torchship.cli import main
from torchship.handlers import torchship_crypto
from torchship.ops.server import LocalServer

from . import test_encrypted_archives
from .test_encrypted_archives import KEYS, SEALED, keyring_of, members

project = test_encrypted_archives.project  # the same empty project fixture


def write_ring(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------ retiring a key still in use


def unpack_as_the_server_does(project: Project, archive: Path, folder: str = "0123abcd") -> Path:
    """What TorchServe leaves in its TMPDIR for a registered archive: models/<id>/ with its members."""
    target = project.server.tmpdir / "models" / folder
    target.mkdir(parents=True)
    with zipfile.ZipFile(archive) as z:
        z.extractall(target)
    return target


def test_retire_refuses_while_the_running_server_has_loaded_an_archive_under_the_key(
    project, mlp_run, monkeypatch, capsys
):
    archive = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True).path
    old = load_keyring(keyring_of(project)).current
    unpacked = unpack_as_the_server_does(project, archive)  # deployed before the rotation
    monkeypatch.setattr(LocalServer, "is_running", lambda self: True)

    assert main(["keys", "rotate-model-key", "--retire", old]) != 0
    out = capsys.readouterr()
    assert old in load_keyring(keyring_of(project)).keys, "the key the server's workers reopen must stay"
    said = " ".join(out.err.split())
    assert "still needed by the running local server" in said and "mlp 1.0" in said
    assert "torchship unregister mlp --version 1.0 && torchship deploy mlp --version 1.0" in said
    assert str(unpacked) in said and "retired" not in out.out

    # redeployed: the rewrapped archive unpacked instead; the key can go
    shutil.rmtree(unpacked)
    unpack_as_the_server_does(project, archive, "4567ef01")
    project.retire_model_key(old)
    assert old not in load_keyring(keyring_of(project)).keys


def test_a_stopped_server_has_nothing_loaded(project, mlp_run, monkeypatch):
    archive = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True).path
    old = load_keyring(keyring_of(project)).current
    unpack_as_the_server_does(project, archive)  # stale folders of a server that is not running
    project.rotate_model_key()
    monkeypatch.setattr(LocalServer, "is_running", lambda self: False)
    project.retire_model_key(old)
    assert old not in load_keyring(keyring_of(project)).keys


def test_an_unreadable_keys_member_in_the_servers_folder_counts_as_using_the_key(project, mlp_run, monkeypatch):
    archive = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True).path
    old = load_keyring(keyring_of(project)).current
    project.rotate_model_key()
    (unpack_as_the_server_does(project, archive) / KEYS).write_text("{not json")
    monkeypatch.setattr(LocalServer, "is_running", lambda self: True)
    with pytest.raises(E.ArchiveError, match="still needed by the running local server"):
        project.retire_model_key(old)


def test_retire_refuses_while_an_archive_of_the_store_cannot_be_read(project, mlp_run, capsys):
    project.package("mlp", version="2.0", checkpoint=mlp_run, encrypt=True)
    cut = project.package("mlp", version="6.0", checkpoint=mlp_run, encrypt=True).path
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])  # a copy in progress, a bad block
    old = load_keyring(keyring_of(project)).current

    assert main(["keys", "rotate-model-key", "--retire", old]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "mlp-6.0.mar not rewrapped" in err and "not retired" in err
    assert old in load_keyring(keyring_of(project)).keys
    cut.write_bytes(whole)
    assert project.verify(cut).ok, "the archive, once whole, still opens with the keyring"

    cut.write_bytes(whole[: len(whole) // 2])  # and retire_model_key itself refuses
    with pytest.raises(E.ArchiveError, match="mlp-6.0.mar.*cannot be told"):
        project.retire_model_key(old)


# ------------------------------------------------------------------ keyrings that are links


def test_a_symlinked_keyring_is_refused_on_read_and_never_replaced(project, mlp_run, tmp_path):
    archive = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True).path
    ring = keyring_of(project)
    real = tmp_path / "secrets" / "model-keys.json"
    real.parent.mkdir()
    ring.rename(real)
    ring.symlink_to(real)
    before = real.read_bytes()
    keys_member = members(archive)[KEYS]

    with pytest.raises(E.ArchiveError, match="is a symbolic link .*regular file"):
        load_keyring(ring)
    with pytest.raises(E.ArchiveError, match="is a symbolic link"):
        project.rotate_model_key()
    with pytest.raises(E.ArchiveError, match="is a symbolic link"):
        rotate_keyring(ring)
    assert ring.is_symlink() and real.read_bytes() == before
    assert members(archive)[KEYS] == keys_member, "nothing was rewrapped"
    report = project.verify(archive)
    assert not report.ok and "symbolic link" in report.failure.detail
    assert project.verify(archive, model_key=real).ok, "the real file, named, still works"


def test_a_dangling_keyring_link_is_an_error_never_a_skipped_check(project, mlp_run, tmp_path):
    archive = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True).path
    ring = keyring_of(project)
    ring.unlink()
    ring.symlink_to(tmp_path / "nowhere.json")

    report = project.verify(archive)
    assert not report.ok and report.failure.name == "weights"
    assert "dangling" in report.failure.detail
    for call in (lambda: load_keyring(ring), project.rotate_model_key, project.model_keys):
        with pytest.raises(E.ArchiveError, match="dangling"):
            call()
    with pytest.raises(E.ArchiveError, match="dangling"):  # package --encrypt does not make one over it
        project.package("mlp", version="2.0", checkpoint=mlp_run, encrypt=True)
    assert ring.is_symlink() and not (tmp_path / "nowhere.json").exists()


# ------------------------------------------------------------------ malformed keyrings


KEY = torchship_crypto.new_key()
KEY_B64 = base64.b64encode(KEY).decode()


ZERO = "A" * 43 + "="


def raw(current: object, *pairs: tuple[str, str], extra: str = "") -> str:
    """Keyring text as JSON allows it, duplicate names included (json.dumps cannot write those)."""
    items = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
    return '{"current": ' + json.dumps(current) + ', "keys": {' + items + "}" + extra + "}"


@pytest.mark.parametrize(
    "text,match",
    [
        (raw("mk-a", ("mk-a", KEY_B64), ("mk-a", ZERO)), "names mk-a twice"),
        (raw("mk-a", ("mk-a", KEY_B64), extra=', "current": "mk-b"'), "names current twice"),
        (raw("mk-a", ("mk-a", KEY_B64), extra=', "keys": {}'), "names keys twice"),
        (raw("mk-z", ("mk-z", ZERO)), "mk-z' is all zeros"),
        (raw(KEY_B64, ("mk-a", KEY_B64)), "current key is a value that is not"),
        (raw(KEY_B64, (KEY_B64, KEY_B64)), "filed under a value that is not"),
        (raw(KEY.hex(), (KEY.hex(), KEY_B64)), "filed under a value that is not"),
        (raw(7, ("mk-a", KEY_B64)), "current key is a value that is not"),
    ],
)
def test_a_malformed_keyring_is_refused_without_showing_a_key(tmp_path, text, match):
    path = write_ring(tmp_path / "model-keys.json", text)
    with pytest.raises(E.ArchiveError, match=match) as info:
        load_keyring(path)
    said = str(info.value)
    for shown in (KEY_B64, KEY.hex(), KEY_B64.rstrip("=")[:16]):
        assert shown not in said


def test_retire_does_not_echo_an_id_that_is_a_key(project, mlp_run, capsys):
    project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True)
    assert main(["keys", "rotate-model-key", "--retire", KEY_B64]) != 0
    captured = capsys.readouterr()
    assert KEY_B64 not in captured.out + captured.err and "not a key id" in captured.err


# ------------------------------------------------------------------ rotation interrupted


def two_sealed(project: Project, mlp_run) -> tuple[Path, Path]:
    a = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True).path
    b = project.package("mlp", version="2.0", checkpoint=mlp_run, encrypt=True).path
    return a, b


def fail_on(monkeypatch, store: Path, name: str, exc: BaseException) -> None:
    """os.replace raises `exc` when it would rename something over `store`/`name` (once)."""
    real = os.replace
    state = {"done": False}

    def replace(src, dst, *a, **kw):
        if Path(dst) == store / name and not state["done"]:
            state["done"] = True
            raise exc
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)


def test_ctrl_c_between_the_archive_and_its_signature_puts_both_back(project, mlp_run, monkeypatch):
    a, b = two_sealed(project, mlp_run)
    before = {p: p.read_bytes() for p in (a, b, archiver.signature_path(a))}
    fail_on(monkeypatch, project.store, "mlp-1.0.mar.sig", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        project.rotate_model_key()
    monkeypatch.undo()
    assert a.read_bytes() == before[a] and archiver.signature_path(a).read_bytes() == before[archiver.signature_path(a)]
    assert project.verify(a).ok and project.verify(b).ok
    assert not list(project.store.glob(".rekey-*")), "no leftovers in the store"
    _, _, done, failed = project.rotate_model_key()  # and the next rotation completes
    assert not failed and {r.path for r in done} == {a, b}
    assert project.verify(a).ok and project.verify(b).ok


def test_an_oserror_on_one_archive_is_that_archives_line_and_the_others_are_rewrapped(project, mlp_run, monkeypatch):
    a, b = two_sealed(project, mlp_run)
    before = a.read_bytes()
    rekeys = []
    monkeypatch.setattr(type(project.registry), "record_rekey", lambda self, *args, **kw: rekeys.append(args))
    fail_on(monkeypatch, project.store, "mlp-1.0.mar.sig", OSError(errno.EROFS, os.strerror(errno.EROFS)))
    old, new, done, failed = project.rotate_model_key()
    assert [r.path for r in done] == [b] and [x for x, _ in failed] == [a]
    assert "replacing mlp-1.0.mar failed" in failed[0][1] and "put back" in failed[0][1]
    assert a.read_bytes() == before and project.verify(a).ok and project.verify(b).ok
    assert [args[:2] for args in rekeys] == [("mlp", "2.0")], "the registry follows only what was replaced"
    assert not list(project.store.glob(".rekey-*"))


def test_the_cli_reports_a_failed_replacement_as_not_rewrapped(project, mlp_run, monkeypatch, capsys):
    a, b = two_sealed(project, mlp_run)
    fail_on(monkeypatch, project.store, "mlp-2.0.mar", OSError(errno.EROFS, os.strerror(errno.EROFS)))
    assert main(["keys", "rotate-model-key"]) != 0
    captured = capsys.readouterr()
    assert "mlp-1.0.mar" in captured.out and "mlp-2.0.mar not rewrapped" in " ".join(captured.err.split())
    monkeypatch.undo()
    assert project.verify(a).ok and project.verify(b).ok


# ------------------------------------------------------------------ deploy's keyed verification


class NoServer:
    def __getattr__(self, name):
        raise AssertionError(f"the server was reached ({name}) with an archive that should have been refused")


def swapped(project: Project, mlp_run, tmp_path) -> Path:
    """mlp 1.0 carrying mlp 2.0's ciphertext and keys entry (other weights, same model key), re-signed."""
    other = tmp_path / "other-run"
    shutil.copytree(mlp_run, other)
    (other / ".torchship-digests.json").unlink(missing_ok=True)
    weights = load_file(str(mlp_run / "model.safetensors"))
    save_file({k: v * 0 for k, v in weights.items()}, str(other / "model.safetensors"))
    a = project.package("mlp", version="1.0", checkpoint=mlp_run, encrypt=True).path
    b = project.package("mlp", version="2.0", checkpoint=other, encrypt=True).path
    theirs = members(b)

    def forged(m):
        m = {**m, SEALED: theirs[SEALED], KEYS: theirs[KEYS]}
        prov = json.loads(m[PROVENANCE_NAME])
        prov["members"] = {
            n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in m.items() if n != PROVENANCE_NAME
        }
        return {**m, PROVENANCE_NAME: json.dumps(prov).encode()}

    tamper.rewrite(a, forged)
    archiver.sign(a, project.key_dir)
    return a


def test_deploy_decrypts_and_refuses_other_weights_swapped_in(project, mlp_run, tmp_path, monkeypatch):
    from torchship.ops.deploy import deploy

    swapped(project, mlp_run, tmp_path)
    with pytest.raises(E.VerificationError, match="other weights than the provenance records"):
        deploy(NoServer(), project.store, "mlp", "1.0", public_key=project.public_key, model_keys=keyring_of(project))
    monkeypatch.setattr(Project, "client", NoServer())
    with pytest.raises(E.VerificationError, match="other weights than the provenance records"):
        project.deploy("mlp", "1.0")


class Stop(Exception):
    """Not a TorchServeError: nothing on the way catches it."""


def test_deploy_apply_and_rollout_use_the_projects_keyring_when_there_is_one(project, mlp_run, monkeypatch):
    import torchship.ops.deploy as ops_deploy
    from torchship.ops import desired

    seen = []

    def fake(client, store, name, version=None, **kw):
        seen.append(kw.get("model_keys"))
        raise Stop

    monkeypatch.setattr(ops_deploy, "deploy", fake)
    monkeypatch.setattr(Project, "client", NoServer())
    project.package("mlp", version="1.0", checkpoint=mlp_run)  # plain: no keyring, deploy as before
    with pytest.raises(Stop):
        project.deploy("mlp", "1.0")
    assert seen == [None]
    project.package("mlp", version="2.0", checkpoint=mlp_run, encrypt=True)
    with pytest.raises(Stop):
        project.deploy("mlp", "2.0")
    assert seen[-1] == keyring_of(project)

    params = {"workers": 1, "batch_size": 1, "max_batch_delay": 1}
    action = desired.Action("register", "mlp", "2.0", "new", params=params)
    monkeypatch.setattr(desired, "plan", lambda client, d: [action])
    with pytest.raises(Stop):
        project.apply(desired.parse_desired({"models": {"mlp": {"versions": ["2.0"]}}}))
    assert len(seen) == 3 and seen[-1] == keyring_of(project)

    class Client:
        def describe(self, name, version=None):
            raise E.ModelNotFound(404, "ModelNotFoundException", "none")

    monkeypatch.setattr(Project, "client", Client())
    monkeypatch.setattr(Project, "registry", None)
    with pytest.raises(Stop):
        project.rollout("mlp", "2.0", golden=[])
    assert len(seen) == 4 and seen[-1] == keyring_of(project)
