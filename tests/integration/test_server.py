"""The local server torchship owns: secure listeners, token auth, start/stop/status behaviour."""

import json
import shutil

import psutil
import pytest
import requests

from torchship import errors as E

from .conftest import start_server

pytestmark = pytest.mark.integration


def test_every_listener_is_on_loopback(server):
    pid = server.pid()
    procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    listening = [c for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 5  # inference, management, metrics, 2x gRPC
    for conn in listening:
        assert conn.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1"), conn


def test_ping_needs_the_token(server, client):
    assert client.ping() == "Healthy"
    url = server.config().inference_url + "/ping"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = requests.get(url, headers=headers, timeout=10)
        assert resp.status_code == 400 and resp.json()["type"] == "InvalidKeyException"


def test_inference_key_does_not_open_the_management_port(server):
    keys = json.loads(server.key_file.read_text())
    resp = requests.get(
        server.config().management_url + "/models",
        headers={"Authorization": "Bearer " + keys["inference"]["key"]},
        timeout=10,
    )
    assert resp.status_code == 400


def test_key_file_is_private(server):
    assert server.key_file.stat().st_mode & 0o077 == 0


def test_allowed_urls_limited_to_the_store(server):
    cfg = server.config()
    assert cfg.get("allowed_urls").startswith("file://\\Q" + str(cfg.model_store))


def test_second_start_says_already_running(server):
    assert server.start() is False
    assert server.status().healthy


def test_lifecycle_start_status_stop_and_port_clash(tmp_path, store, server):
    other = start_server(tmp_path / "srv", store)
    try:
        st = other.status()
        assert st.running and st.healthy and st.pid
        pids = [st.pid] + [p.pid for p in psutil.Process(st.pid).children(recursive=True)]
    finally:
        assert other.stop() is True
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert other.status().running is False and other.status().healthy is False
    assert other.stop() is False
    assert not other.key_file.exists()
    # the session server still runs: the two never touched each other
    assert server.status().healthy

    clash = type(other)(
        other.config_path,
        tmp_path / "clash",
        model_store=store,
        overrides={**other.overrides, "inference_address": server.config().inference_url},
    )
    with pytest.raises(E.ServerStartError, match="already in use"):
        clash.start()


def test_a_project_deep_in_the_file_system_serves(tmp_path, store, mlp_archive):
    # TorchServe puts each worker's unix socket in TMPDIR; in .torchship/server/tmp of a deep folder
    # its path would pass the 107 bytes a socket address holds, and every register would fail
    workdir = tmp_path / ("deep-" * 12) / ("er-" * 12) / ".torchship" / "server"
    assert len(str(workdir / "tmp" / ".ts.sock.9000")) > 107
    server = start_server(workdir, store)
    try:
        tmpdir = server.tmpdir
        assert tmpdir.parent != workdir and len(str(tmpdir / ".ts.sock.65535")) <= 107
        assert tmpdir.stat().st_mode & 0o777 == 0o700
        with server.client() as c:
            c.register(mlp_archive.name, model_name="deep", initial_workers=1)
            assert c.predict("deep", {"data": [0.0] * 100})["class_id"] in range(10)
            assert any(tmpdir.glob(".ts.sock.*"))
    finally:
        server.stop()
    # a folder of that name that is not this account's private one is refused, not used
    tmpdir.chmod(0o777)
    try:
        with pytest.raises(E.ServerStartError, match="not a private folder of this account"):
            server.start(timeout=60)
    finally:
        tmpdir.chmod(0o700)
        shutil.rmtree(tmpdir)  # outside tmp_path: the test removes what it made
