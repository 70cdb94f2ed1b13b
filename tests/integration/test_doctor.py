"""`torchship doctor` as a user runs it, against the session's real TorchServe: all rows pass on a machine
set up as `make test` sets it up; break one thing and its row fails with the fix that mends it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from torchship import archiver
from torchship.ops.server import free_port_overrides
from torchship.sdk.config import read_properties, write_properties

pytestmark = pytest.mark.integration

TORCHSHIP = str(Path(sys.executable).parent / "torchship")
# rows that may warn on a machine that `make test` set up (wrk is optional; the schema wheel is the tests')
MAY_WARN = {"wrk", "data schemas"}
MAY_SKIP = {"model keys"}  # a project that encrypts nothing has no model keyring


@pytest.fixture
def home(tmp_path) -> Path:
    """A project folder of its own (TORCHSHIP_HOME) holding a signing key pair, as `torchship package` leaves it."""
    archiver.ensure_keys(tmp_path / ".torchship" / "keys")
    return tmp_path


def doctor(config: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TORCHSHIP_HOME": str(home)}
    for var in ("TS_MANAGEMENT_URL", "TS_INFERENCE_URL"):
        env.pop(var, None)
    return subprocess.run(
        [TORCHSHIP, "--config", str(config), "doctor", *args], capture_output=True, text=True, timeout=60, env=env
    )


def rows_of(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {row["check"]: row for row in json.loads(result.stdout)["checks"]}


def test_every_row_passes_beside_a_healthy_server(server, home):
    result = doctor(server.effective_config_path, home, "--json")
    rows = rows_of(result)
    not_ok = {name: row for name, row in rows.items() if row["status"] != "ok"}
    allowed = {name: "warn" for name in MAY_WARN} | {name: "skip" for name in MAY_SKIP}
    assert all(allowed.get(name) == row["status"] for name, row in not_ok.items()), not_ok
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["seconds"] < 3

    pid = server.pid()
    assert rows["server"]["found"].startswith(f"Healthy (pid {pid}")
    for name in ("inference", "management", "metrics", "grpc_inference", "grpc_management"):
        assert f"held by this project's server (pid {pid})" in rows[f"port {name}"]["found"]
    assert rows["server key file"]["found"] == f"{server.key_file} 0600"
    assert rows["signing key"]["found"] == f"{home / '.torchship' / 'keys' / 'signing-key.pem'} 0600"
    assert str(server.config().model_store) in rows["model store"]["found"]

    table = doctor(server.effective_config_path, home)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == ["check", "status", "found", "fix"]
    assert table.stdout.rstrip().splitlines()[-1].startswith("all ")


def test_a_signing_key_others_can_read_fails_and_its_fix_mends_it(server, home):
    key = home / ".torchship" / "keys" / "signing-key.pem"
    key.chmod(0o644)
    result = doctor(server.effective_config_path, home, "--json")
    assert result.returncode == 1
    row = rows_of(result)["signing key"]
    assert row == {
        "check": "signing key",
        "status": "FAIL",
        "found": f"{key} is 0644: other accounts may read or change it",
        "fix": f"chmod 600 {key}",
    }
    assert "PRIVATE KEY" not in result.stdout  # the doctor never shows key material

    text = doctor(server.effective_config_path, home)
    line = next(line for line in text.stdout.splitlines() if line.startswith("signing key"))
    assert "FAIL" in line and line.rstrip().endswith(f"chmod 600 {key}")
    assert text.returncode == 1 and "1 of " in text.stdout.splitlines()[-1]

    subprocess.run(row["fix"], shell=True, check=True)
    assert doctor(server.effective_config_path, home).returncode == 0


def test_ports_held_by_others_fail_and_name_the_config_key(server, home, tmp_path):
    """A second project whose config names the session server's inference port and a port a socket holds."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        props = {**read_properties(server.effective_config_path), **free_port_overrides()}
        props["inference_address"] = server.config().inference_url  # held by a TorchServe that is not this project's
        props["metrics_address"] = f"http://127.0.0.1:{held.getsockname()[1]}"
        other = tmp_path / "other"
        other.mkdir()
        config = other / "config.properties"
        write_properties(config, props)

        result = doctor(config, home, "--json")
        rows = rows_of(result)
    finally:
        held.close()
    assert result.returncode == 1
    inference, metrics = rows["port inference"], rows["port metrics"]
    assert inference["status"] == "FAIL" and f"held by pid {server.pid()} (TorchServe)" in inference["found"]
    assert inference["fix"].startswith("set inference_address=http://127.0.0.1:") and str(config) in inference["fix"]
    assert metrics["status"] == "FAIL" and f"held by pid {os.getpid()}" in metrics["found"]
    assert metrics["fix"].startswith("set metrics_address=http://127.0.0.1:")
    assert rows["port management"]["status"] == "ok" and rows["port management"]["found"].endswith(" free")
    # that project's own server (in TORCHSHIP_HOME) does not run: its fix starts it with the same config
    assert rows["server"]["status"] == "FAIL" and rows["server"]["fix"] == f"torchship --config {config} serve start"
