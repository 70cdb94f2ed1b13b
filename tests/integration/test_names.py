"""Names and paths against a real TorchServe: one rule for model names and versions (archiver.names),
checked before any file is read or any request is sent; a name is never a path."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchship import archiver
from torchship.archiver import ArchiveSpec, example_spec

pytestmark = pytest.mark.integration
TORCHSHIP = str(Path(sys.executable).parent / "torchship")


def run(server, *args):
    return subprocess.run(
        [TORCHSHIP, "--config", str(server.effective_config_path), *args], capture_output=True, text=True, timeout=180
    )


def names(client) -> set[str]:
    return {m.name for m in client.list_models()}


@pytest.fixture
def probemm(mlp_run, store, key_dir):
    """probemm-1.0.mar, signed, in the server's store, and a copy one folder up: the file that
    `deploy ../probemm --version 1.0` used to verify before registering the other one."""
    spec = example_spec("mlp", mlp_run, "1.0")
    spec = ArchiveSpec(
        "probemm", "1.0", spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
    )
    inside = archiver.package(spec, store, key_dir, force=True).path
    outside = store.parent / inside.name
    shutil.copy(inside, outside)
    shutil.copy(archiver.signature_path(inside), archiver.signature_path(outside))
    made = [inside, archiver.signature_path(inside), outside, archiver.signature_path(outside)]
    try:
        yield inside, outside
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def test_cli_deploy_of_a_dot_dot_name_is_refused_and_nothing_registered(server, client, probemm, public_key):
    before = {p: p.read_bytes() for p in probemm}
    r = run(server, "deploy", "../probemm", "--version", "1.0", "--public-key", str(public_key))
    assert r.returncode == 7, r.stdout + r.stderr
    assert r.stderr.startswith("error: invalid model name '../probemm': ") and r.stderr.count("\n") == 1
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert client.ping() == "Healthy"
    assert not {"probemm", "../probemm", "..", "../probemm-1.0"} & names(client)
    assert {p: p.read_bytes() for p in probemm} == before

    # every other way to name it is refused the same way, and the server is unchanged
    for args in (
        ["unregister", "../probemm"],
        ["describe", "../probemm"],
        ["scale", "../probemm", "--min", "1"],
        ["set-default", "../probemm", "1.0"],
        ["deploy", "probemm", "--version", "../probemm-1.0"],
        ["predict", "../probemm", "--json", "{}"],
        ["deploy", "probemm\n", "--version", "1.0"],
    ):
        r = run(server, *args, *(["--public-key", str(public_key)] if args[0] == "deploy" else []))
        assert r.returncode == 7 and r.stderr.startswith("error: invalid ") and r.stderr.count("\n") == 1, (args, r)
    assert client.ping() == "Healthy"
    assert not {"probemm", "../probemm"} & names(client)


def test_the_valid_name_deploys_the_file_it_verified(server, client, probemm, public_key):
    """The control: the same archive under its valid name registers the store's file, by name."""
    inside, _ = probemm
    try:
        r = run(server, "deploy", "probemm", "--version", "1.0", "--public-key", str(public_key))
        assert r.returncode == 0, r.stderr
        [desc] = client.describe("probemm", "1.0")
        assert desc.status == "READY"
        assert {m.url for m in client.list_models() if m.name == "probemm"} == {inside.name}
    finally:
        client.unregister("probemm", "1.0")


def test_apply_of_a_desired_state_with_a_bad_name_registers_nothing(server, client, probemm, public_key, tmp_path):
    f = tmp_path / "deploy.yaml"
    f.write_text('models:\n  "../probemm":\n    versions: ["1.0"]\n')
    r = run(server, "apply", str(f), "--public-key", str(public_key))
    assert r.returncode == 7 and r.stderr.startswith(f"error: {f}: invalid model name") and r.stderr.count("\n") == 1
    assert not {"probemm", "../probemm"} & names(client)
    assert client.ping() == "Healthy"


@pytest.mark.parametrize("bad", ["../x", "a/b", "x\ny", "..", "x\x00y", "mlр"])
def test_client_register_refuses_a_bad_model_name_before_sending(server, client, probemm, bad):
    """TorchServe 0.12 itself takes `model_name=../x`, and then no HTTP path can name it again."""
    inside, _ = probemm
    with server.client() as spy:
        sent = []
        real_send = spy._send
        spy._send = lambda *a, **k: sent.append(a) or real_send(*a, **k)
        with pytest.raises(ValueError, match="invalid model name"):
            spy.register(inside.name, model_name=bad, initial_workers=1)
        with pytest.raises(ValueError, match="invalid model name"):
            spy.describe(bad)
        assert sent == []
        assert spy.ping() == "Healthy" and len(sent) == 1
    assert bad not in names(client) and "probemm" not in names(client)
