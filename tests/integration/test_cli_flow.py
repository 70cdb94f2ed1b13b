"""The CLI end to end against the session's real TorchServe, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import rows

pytestmark = pytest.mark.integration

TORCHSHIP = str(Path(sys.executable).parent / "torchship")


def run(server, *args):
    return subprocess.run(
        [TORCHSHIP, "--config", str(server.effective_config_path), *args], capture_output=True, text=True, timeout=180
    )


def test_train_package_deploy_predict(server, client):
    r = run(server, "train", "mlp", "--quick", "--epochs", "3")
    assert r.returncode == 0, r.stderr
    assert "epoch 3/3" in r.stderr and "checkpoint:" in r.stdout

    r = run(server, "package", "mlp", "--version", "3.0")
    assert r.returncode == 0, r.stderr
    archive = Path(r.stdout.split("-> ")[1].split(" (")[0])
    assert archive.name == "mlp-3.0.mar" and archive.parent == server.config().model_store
    before = archive.read_bytes()

    r = run(server, "package", "mlp", "--version", "3.0")
    assert r.returncode == 8 and "--force" in r.stderr and r.stderr.count("\n") == 1
    assert archive.read_bytes() == before

    # threads per worker, as `torchship tune` recommends: in the model-config, signed like the rest
    r = run(server, "package", "mlp", "--version", "3.1", "--threads", "2")
    assert r.returncode == 0, r.stderr
    from torchship.perf.tune import packaged_threads

    threaded = archive.with_name("mlp-3.1.mar")
    try:
        assert packaged_threads(threaded) == 2 and packaged_threads(archive) == 1
        r = run(server, "verify", str(threaded))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        threaded.unlink()
        threaded.with_name(threaded.name + ".sig").unlink(missing_ok=True)

    try:
        r = run(server, "deploy", "mlp", "--version", "3.0", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["action"] == "registered" and out["version"] == "3.0" and out["status"] == "READY"

        r = run(server, "predict", "mlp", "--version", "3.0", "--json", json.dumps({"data": rows(1)[0]}))
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert 0 <= answer["class_id"] < 10 and len(answer["probabilities"]) == 10

        r = run(server, "predict", "mlp", "--version", "3.0", "--json", '{"data": [1, 2]}')
        assert r.returncode == 7
        assert r.stderr.startswith("error: 400 BadRequest: 'data' has shape [2]") and r.stderr.count("\n") == 1

        r = run(server, "models", "--json")
        assert r.returncode == 0
        assert {(m["name"], m["version"]) for m in json.loads(r.stdout)} >= {("mlp", "3.0")}
        r = run(server, "models", "mlp")
        assert r.returncode == 0 and "3.0" in r.stdout and "READY" in r.stdout

        r = run(server, "describe", "no-such-model")
        assert r.returncode == 4 and r.stderr.startswith("error: 404")
    finally:
        client.unregister("mlp", "3.0")


def test_serve_start_status_stop_in_a_project(tmp_path):
    """`torchship serve` on a project of its own (free ports), as `make serve` / `make stop` run it."""
    from torchship.ops.server import free_port_overrides
    from torchship.sdk.config import read_properties, write_properties

    from .conftest import ROOT

    props = {**read_properties(ROOT / "config.properties"), **free_port_overrides()}
    write_properties(tmp_path / "config.properties", props)
    env = {**__import__("os").environ, "TORCHSHIP_HOME": str(tmp_path)}

    def serve(*args):
        return subprocess.run([TORCHSHIP, "serve", *args], capture_output=True, text=True, timeout=180, env=env)

    r = serve("start")
    try:
        assert r.returncode == 0, r.stderr
        assert "TorchServe started" in r.stdout and props["inference_address"] in r.stdout
        r = serve("start")
        assert r.returncode == 0 and "already running" in r.stdout
        r = serve("status", "--json")
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert status["healthy"] is True and status["workdir"] == str(tmp_path / ".torchship" / "server")
        assert (tmp_path / ".torchship" / "server" / "key_file.json").exists()
    finally:
        r = serve("stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    r = serve("status")
    assert r.returncode == 3 and "not running" in r.stdout
    assert serve("stop").stdout.strip() == "TorchServe is not running."
