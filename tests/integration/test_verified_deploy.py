"""Nothing reaches TorchServe unless it verifies; third-party handlers can be packaged and served."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.fixtures import tamper
from torchship import archiver
from torchship import errors as E
from torchship.archiver import ArchiveSpec, example_spec
from torchship.ops.deploy import deploy

from .conftest import ROOT

pytestmark = pytest.mark.integration
TORCHSHIP = str(Path(sys.executable).parent / "torchship")
FIXTURES = ROOT / "tests" / "fixtures"


def make_bad(kind, mlp_run, store, key_dir, tmp_path):
    """An archive named bad-<n>.0.mar, spoiled in one way, in the server's store."""
    version = {
        "weights": "1.0",
        "handler": "2.0",
        "swapped": "3.0",
        "unsigned": "4.0",
        "zipslip": "5.0",
        "pickle": "6.0",
    }[kind]
    spec = example_spec("mlp", mlp_run, version)
    spec = ArchiveSpec(
        "bad", version, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
    )
    path = archiver.package(spec, store, key_dir, force=True).path
    if kind == "pickle":  # an insider adds a pickle and re-signs; the digests still catch it
        tamper.add_raw_member(path, zipfile.ZipInfo("extra.pkl"), tamper.malicious_pickle())
        archiver.sign(path, key_dir)
    if kind == "weights":
        tamper.rewrite(path, lambda m: {**m, "model.safetensors": tamper.flip_byte(m["model.safetensors"])})
    elif kind == "handler":
        tamper.rewrite(path, lambda m: {**m, "mlp_handler.py": m["mlp_handler.py"] + b"\nBACKDOOR = 1\n"})
    elif kind == "swapped":
        older = archiver.package(example_spec("mlp", mlp_run, "0.9"), tmp_path, key_dir).path
        shutil.copy(older, path)
        shutil.copy(archiver.signature_path(older), archiver.signature_path(path))
    elif kind == "unsigned":
        archiver.signature_path(path).unlink()
    elif kind == "zipslip":
        tamper.add_raw_member(path, zipfile.ZipInfo("../../escape.py"), b"x = 1")
        archiver.sign(path, key_dir)
    return version


@pytest.mark.parametrize(
    "kind, check",
    [
        ("weights", "provenance"),
        ("handler", "provenance"),
        ("swapped", "identity"),
        ("unsigned", "signature"),
        ("zipslip", "safety"),
        ("pickle", "provenance"),
    ],
)
def test_bad_archives_never_reach_the_server(
    kind, check, client, store, key_dir, public_key, mlp_run, tmp_path, mlp_deployed
):
    version = make_bad(kind, mlp_run, store, key_dir, tmp_path)
    with pytest.raises(E.VerificationError, match=rf"failed verification \({check}\)"):
        deploy(client, store, "bad", version, public_key=public_key)
    with pytest.raises(E.ModelNotFound):
        client.describe("bad")
    assert client.ping() == "Healthy"
    assert client.predict("mlp", {"data": [0.0] * 100})["class_id"] in range(10)


def test_unsigned_needs_the_loud_flag_and_safety_still_holds(client, store, key_dir, public_key, mlp_run, tmp_path):
    version = make_bad("unsigned", mlp_run, store, key_dir, tmp_path)
    result = deploy(client, store, "bad", version, public_key=public_key, allow_unsigned=True)
    try:
        assert result.description.ready_workers == 1
    finally:
        client.unregister("bad", version)
    version = make_bad("zipslip", mlp_run, store, key_dir, tmp_path)
    archiver.signature_path(store / f"bad-{version}.mar").unlink()
    with pytest.raises(E.VerificationError, match="safety"):
        deploy(client, store, "bad", version, public_key=public_key, allow_unsigned=True)


def cli(server, *args):
    return subprocess.run(
        [TORCHSHIP, "--config", str(server.effective_config_path), *args], capture_output=True, text=True, timeout=180
    )


def test_third_party_handler_packaged_verified_and_served(server, client, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    state = {f"fc.{k}": v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "linear.pt")
    r = cli(
        server,
        "package",
        "--handler",
        str(FIXTURES / "third_party_linear_handler.py"),
        "--name",
        "linear",
        "--version",
        "1.0",
        "--weights",
        str(tmp_path / "linear.pt"),
        "--model-file",
        str(FIXTURES / "linear_model.py"),
    )
    assert r.returncode == 0, r.stderr
    assert "signed: linear-1.0.mar.sig" in r.stdout
    archive = server.config().model_store / "linear-1.0.mar"

    r = cli(server, "verify", str(archive))
    assert r.returncode == 0, r.stdout + r.stderr
    for check in ("archive", "safety", "signature", "provenance", "identity", "weights"):
        assert check in r.stdout
    assert "FAILED" not in r.stdout

    r = cli(server, "deploy", "linear", "--version", "1.0")
    assert r.returncode == 0, r.stderr
    try:
        x = [1.0, 2.0, 3.0, 4.0]
        answer = client.predict("linear", {"x": x})
        assert answer["y"] == pytest.approx(model(torch.tensor(x)).tolist(), abs=1e-6)
    finally:
        client.unregister("linear")


def test_verify_cli_explains_a_refusal(server, tmp_path, key_dir, mlp_run):
    path = archiver.package(example_spec("mlp", mlp_run, "7.0"), tmp_path, key_dir).path
    tamper.rewrite(path, lambda m: {**m, "evil.py": b"import os"})
    r = cli(server, "verify", str(path), "--public-key", str(archiver.public_key_path(key_dir)), "--json")
    assert r.returncode == 8
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["checks"][-1]["check"] == "provenance"
    assert "added ['evil.py']" in report["checks"][-1]["detail"]
    assert r.stderr.startswith("error: mlp-7.0.mar failed verification (provenance)")
