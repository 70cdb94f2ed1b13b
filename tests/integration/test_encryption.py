"""Weights encrypted at rest, on a real TorchServe: a project of its own driven by the CLI as a user
would (`package --encrypt`, `serve start`, `deploy`, `keys rotate-model-key`), and the worker's own
refusals when the key is missing or wrong, or the ciphertext was altered."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import safetensors.torch

from tests.fixtures import tamper
from tests.helpers import rows
from torchship import errors as E
from torchship.ops.server import LocalServer, free_port_overrides
from torchship.sdk.config import read_properties, write_properties

from .conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TORCHSHIP = str(Path(sys.executable).parent / "torchship")
X = rows(3, seed=11)


class Proj:
    """A torchship project in a temporary folder, driven through the CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        props = {**read_properties(ROOT / "config.properties"), **free_port_overrides()}
        write_properties(root / "config.properties", props)
        self.env = {**os.environ, "TORCHSHIP_HOME": str(root)}

    def cli(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
        r = subprocess.run([TORCHSHIP, *args], capture_output=True, text=True, timeout=300, env=self.env, cwd=self.root)
        assert r.returncode == expect, (args, r.returncode, r.stdout, r.stderr)
        return r

    @property
    def store(self) -> Path:
        return self.root / "model_store"

    @property
    def keyring(self) -> Path:
        return self.root / ".torchship" / "keys" / "model-keys.json"

    @property
    def server(self) -> LocalServer:
        return LocalServer(
            self.root / "config.properties", self.root / ".torchship" / "server", model_keys=self.keyring
        )

    def predict(self, name: str, version: str) -> list:
        with self.server.client() as c:
            return [c.predict(name, {"data": x}, version=version) for x in X]


@pytest.fixture(scope="module")
def proj(tmp_path_factory, mlp_run):
    p = Proj(tmp_path_factory.mktemp("enc-project"))
    p.cli("package", "mlp", "--version", "1.0", "--checkpoint", str(mlp_run))
    p.cli("package", "mlp", "--version", "2.0", "--checkpoint", str(mlp_run), "--encrypt")
    p.cli("serve", "start")
    try:
        yield p
    finally:
        p.cli("serve", "stop")


def test_an_encrypted_archive_answers_exactly_as_the_plain_one(proj):
    proj.cli("deploy", "mlp", "--version", "1.0")
    proj.cli("deploy", "mlp", "--version", "2.0")
    assert proj.predict("mlp", "2.0") == proj.predict("mlp", "1.0")


def test_the_weights_are_not_readable_from_the_archive(proj, mlp_run):
    plain = (mlp_run / "model.safetensors").read_bytes()
    with zipfile.ZipFile(proj.store / "mlp-2.0.mar") as zf:
        names = zf.namelist()
        assert "model.safetensors.tsenc" in names and "model.safetensors" not in names
        sealed = zf.read("model.safetensors.tsenc")
    with pytest.raises(Exception):  # noqa: B017  not safetensors, whatever the error
        safetensors.torch.load(sealed)
    assert plain[64:4096] not in sealed  # no stretch of the weights is there in clear


def test_no_plaintext_weights_on_disk_while_it_serves(proj, mlp_run):
    proj.cli("deploy", "mlp", "--version", "2.0")
    assert proj.predict("mlp", "2.0")
    plain = (mlp_run / "model.safetensors").read_bytes()
    digest = hashlib.sha256(plain).hexdigest()
    needle = plain[8:200]  # the safetensors header: names, shapes and offsets of these weights
    server = proj.server
    # TorchServe unpacks each archive into TMPDIR/models/<id>/; mlp 1.0 is the plain archive of the
    # same weights (deployed by the first test), so its own folder holds them in clear, by design
    plain_folders = {p.parent for p in server.tmpdir.rglob("model.safetensors")}
    sealed = [p for p in server.tmpdir.rglob("model.safetensors.tsenc")]
    assert sealed, "the encrypted archive was not unpacked where expected"
    checked = 0
    for folder in {server.tmpdir, server.workdir}:
        for path in folder.rglob("*"):
            if not path.is_file() or path.is_symlink() or path.parent in plain_folders:
                continue
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() != digest, path
            assert needle not in data, path
            checked += 1
    assert checked > len(sealed)
    # the encrypted version's folder holds the ciphertext, never the plaintext beside it
    assert all(not (p.parent / "model.safetensors").exists() for p in sealed)


def register_raw(proj, archive: str, name: str) -> E.ServerError:
    """Register without torchship's verification (as a server someone else runs would): the worker decides."""
    with proj.server.client() as c, pytest.raises(E.ServerError) as info:
        c.register(archive, model_name=name, initial_workers=1)
    return info.value


def test_a_flipped_ciphertext_byte_fails_the_load_with_its_own_line(proj):
    bad = proj.store / "tampered-2.0.mar"
    shutil.copy2(proj.store / "mlp-2.0.mar", bad)
    # one byte of the last chunk flipped, the zip rebuilt with valid CRCs (as an attacker would)
    tamper.rewrite(
        bad, lambda m: {**m, "model.safetensors.tsenc": tamper.flip_byte(m["model.safetensors.tsenc"], -100)}
    )
    try:
        r = proj.cli("deploy", "tampered", "--version", "2.0", "--allow-unsigned", expect=8)
        assert "tampered-2.0.mar" in r.stderr  # torchship's verification refuses it first
        err = register_raw(proj, bad.name, "tampered")
        assert err.cause is not None and "fails authentication" in err.cause.line, err
    finally:
        bad.unlink()  # (rotation would rightly refuse to rewrap it)


def test_a_missing_or_wrong_key_each_fail_with_their_own_line(proj, tmp_path, mlp_run):
    good = json.loads(proj.keyring.read_text())
    # through the CLI: the project's keyring gone, deploy says which key is missing where
    proj.cli("package", "mlp", "--version", "4.0", "--checkpoint", str(mlp_run), "--encrypt")
    away = tmp_path / "keyring-away.json"
    proj.keyring.rename(away)
    try:
        r = proj.cli("deploy", "mlp", "--version", "4.0", expect=10)
        assert "mlp 4.0 failed to load" in r.stderr and "no model keyring at" in r.stderr
        assert str(proj.keyring) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        away.rename(proj.keyring)
    # a server started without the keyring: the worker has no key at all
    bare = LocalServer(
        proj.root / "config.properties", tmp_path / "bare", model_store=proj.store, overrides=free_port_overrides()
    )
    bare.start(timeout=120)
    try:
        with bare.client() as c, pytest.raises(E.ServerError) as info:
            c.register("mlp-2.0.mar", model_name="nokey", initial_workers=1)
        assert info.value.cause is not None and "has no model key" in info.value.cause.line
    finally:
        bare.stop()

    # the right key id, the wrong key
    wrong = {"current": good["current"], "keys": {k: "A" * 43 + "=" for k in good["keys"]}}
    wrong_file = tmp_path / "wrong-keys.json"
    wrong_file.write_text(json.dumps(wrong))
    wrong_file.chmod(0o600)
    other = LocalServer(
        proj.root / "config.properties",
        tmp_path / "wrong",
        model_store=proj.store,
        overrides=free_port_overrides(),
        model_keys=wrong_file,
    )
    other.start(timeout=120)
    try:
        with other.client() as c:
            with pytest.raises(E.ServerError) as info:
                c.register("mlp-2.0.mar", model_name="wrongkey", initial_workers=1)
            assert info.value.cause is not None and "does not open this archive's data key" in info.value.cause.line
            # a keyring without the archive's key id
            wrong_file.write_text(json.dumps({"current": "mk-00000000", "keys": {"mk-00000000": "A" * 43 + "="}}))
            with pytest.raises(E.ServerError) as info:
                c.register("mlp-2.0.mar", model_name="unknownkey", initial_workers=1)
            assert info.value.cause is not None and "does not hold" in info.value.cause.line
    finally:
        other.stop()


def test_rotation_keeps_old_and_new_archives_serving(proj, mlp_run, tmp_path):
    proj.cli("deploy", "mlp", "--version", "2.0")
    before = proj.predict("mlp", "2.0")
    kept = tmp_path / "mlp-2.0-before-rotation.mar"
    shutil.copy2(proj.store / "mlp-2.0.mar", kept)  # a copy elsewhere, under the old key
    old_key = json.loads(proj.keyring.read_text())["current"]

    out = proj.cli("keys", "rotate-model-key").stdout
    new_key = json.loads(proj.keyring.read_text())["current"]
    assert new_key != old_key and "mlp-2.0.mar" in out
    assert proj.predict("mlp", "2.0") == before  # the loaded version serves on

    # the rewrapped archive loads in a fresh worker, and so does one packaged under the new key
    proj.cli("scale", "mlp", "--version", "2.0", "--min", "2")
    proj.cli("package", "mlp", "--version", "3.0", "--checkpoint", str(mlp_run), "--encrypt")
    proj.cli("deploy", "mlp", "--version", "3.0")
    assert proj.predict("mlp", "3.0") == before
    # an archive still under the old key opens too: the old key stays in the keyring
    shutil.copy2(kept, proj.store / "mlpold-2.0.mar")
    with proj.server.client() as c:
        c.register("mlpold-2.0.mar", model_name="mlpold", initial_workers=1)
        assert [c.predict("mlpold", {"data": x}) for x in X] == before
