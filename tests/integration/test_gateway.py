"""The TLS gateway against a real nginx in front of the session's real TorchServe: TLS with the project's CA,
plaintext and strange CAs refused, tenant keys limited to their models and rate, revoked at once, and
TorchServe's token never handed to a caller."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from torchship import TorchServe
from torchship import errors as E
from torchship.gateway import Rate, TenantStore
from torchship.gateway.process import nginx_executable
from torchship.gateway.tls import local_certificates
from torchship.ops.server import free_ports
from torchship.sdk.auth import StaticKeys

from .conftest import NEEDS_NGINX, Caller, deploy_example, start_gateway

pytestmark = [
    pytest.mark.integration,
    NEEDS_NGINX,
]
TORCHSHIP = str(Path(sys.executable).parent / "torchship")
MLP = {"data": [0.25] * 100}


@pytest.fixture(scope="module")
def gateway(server, mlp_deployed):
    """The gateway of the session's server (its folder beside the server's, as a project has it), on a free port."""
    gw = start_gateway(server)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def ca(gateway) -> Path:
    return Path(gateway.state()["ca_file"])


@pytest.fixture(scope="module")
def call(gateway, ca) -> Caller:
    return Caller(gateway.status().url, ca)


@pytest.fixture(scope="module")
def through(server, gateway):
    """The client `from_config` gives for this server now: through the gateway."""
    with TorchServe.from_config(server.effective_config_path, retries=0) as ts:
        yield ts


def tenant_client(gateway, ca, key: str) -> TorchServe:
    return TorchServe(inference_url=gateway.status().url, keys=StaticKeys(inference=key), ca_file=ca, retries=0)


def counted(gateway, done, timeout: float = 5.0):
    """The per-tenant usage once `done` says so: nginx writes a request's log line just after its answer."""
    deadline = time.monotonic() + timeout
    while True:
        usage = gateway.usage()
        if done(usage) or time.monotonic() > deadline:
            return usage
        time.sleep(0.05)


def server_keys(server) -> list[str]:
    raw = json.loads(server.key_file.read_text())
    return [raw["inference"]["key"], raw["management"]["key"], raw["API"]["key"]]


def test_from_config_predicts_through_tls_pinning_the_project_ca(server, client, gateway, ca, through):
    assert through.urls["inference"] == gateway.status().url and through.urls["inference"].startswith("https://")
    assert through.ca_file == ca and ca == gateway.tls_dir / "ca.pem"
    assert through.urls["management"] == client.urls["management"]  # management stays on loopback
    answer = through.predict("mlp", MLP)
    assert answer == client.predict("mlp", MLP) and set(answer) >= {"class_id", "probabilities"}
    assert through.ping() == "Healthy"
    # the keep-alive fast path speaks TLS too: one connection for many calls
    route = through._direct("inference")
    assert route is not None and isinstance(route.conn.sock, ssl.SSLSocket)
    sock = route.conn.sock
    for _ in range(5):
        through.predict("mlp", MLP)
    assert route.conn.sock is sock and sock.version() in ("TLSv1.2", "TLSv1.3")
    with TorchServe.from_config(server.effective_config_path, gateway=False) as direct:
        assert direct.urls["inference"] == client.urls["inference"]


def test_plaintext_on_the_gateway_port_is_refused(gateway):
    port = int(gateway.status().url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/predictions/mlp", body=json.dumps(MLP), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    assert resp.status == 400 and "plain HTTP request was sent to HTTPS port" in body
    assert "class_id" not in body


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")  # old on purpose
def test_old_tls_is_refused(gateway, ca):
    port = int(gateway.status().url.rsplit(":", 1)[1])
    old = ssl.create_default_context(cafile=str(ca))
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1: the server must say no
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="127.0.0.1")


def test_an_unknown_ca_is_refused(server, gateway, tmp_path):
    other = local_certificates(tmp_path / "other-ca", ["localhost"])
    url = gateway.status().url
    key = gateway.tenants.owner_key()
    stranger = TorchServe(inference_url=url, keys=StaticKeys(inference=key), ca_file=other.ca, retries=0)
    with pytest.raises(E.ServerUnreachable, match="SSL"):
        stranger.predict("mlp", MLP)
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context(cafile=str(other.ca)).wrap_socket(raw, server_hostname="127.0.0.1")
    # nor does the machine's own trust store know the project's CA
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url + "/ping", headers={"Authorization": f"Bearer {key}"}, timeout=10, verify=True)


def test_no_key_or_an_unknown_key_is_401(call):
    for key in (None, "tsk_" + "0" * 64, "wrong"):
        status, headers, body = call("POST", "/predictions/mlp", key, json.dumps(MLP).encode())
        assert status == 401, body
        assert headers["www-authenticate"].startswith("Bearer") and json.loads(body)["type"] == "Unauthorized"
    status, _, _ = call("GET", "/ping")
    assert status == 401


def test_a_tenant_key_works_for_its_models_only(gateway, ca, call):
    _, key = gateway.add_tenant("alice", models=["mlp"])
    try:
        alice = tenant_client(gateway, ca, key)
        assert set(alice.predict("mlp", MLP)) >= {"class_id", "probabilities"}
        assert set(alice.predict("mlp", MLP, version="1.0")) >= {"class_id", "probabilities"}
        assert call("GET", "/ping", key)[0] == 200
        for other in ("sentiment", "MLP", "mlp2"):
            status, _, body = call("POST", f"/predictions/{other}", key, b"{}")
            assert status == 403 and json.loads(body)["type"] == "Forbidden", other
        assert call("POST", "/v2/models/sentiment/infer", key, b"{}")[0] == 403
        assert call("POST", "/explanations/sentiment", key, b"{}")[0] == 403
    finally:
        gateway.revoke_tenant("alice")


def test_nothing_but_inference_is_reachable_through_the_gateway(gateway, call):
    key = gateway.tenants.owner_key()  # every model, no rate: the widest key there is
    for method, path in [
        ("GET", "/models"),
        ("GET", "/models/mlp"),
        ("POST", "/models?url=mlp-1.0.mar"),
        ("DELETE", "/models/mlp/1.0"),
        ("PUT", "/models/mlp/1.0/set-default"),
        ("GET", "/token?type=inference"),
        ("GET", "/metrics"),
        ("GET", "/api-description"),
        ("OPTIONS", "/"),
        ("GET", "/predictions/../models"),
        ("GET", "/predictions/mlp%2F..%2F..%2Fmodels"),
        ("POST", "/predictions/mlp%2F..%2F..%2Fmodels"),
        ("GET", "/v1/models/mlp"),
    ]:
        status, _, body = call(method, path, key)
        assert status in (404, 405), (method, path, status, body[:200])
        assert b"modelName" not in body and b"ts_inference" not in body
    assert call("GET", "/predictions/mlp", key)[0] == 405  # predictions are POST
    # a model nobody registered: TorchServe's own 404 passes through
    status, _, body = call("POST", "/predictions/nosuchmodel", key, b"{}")
    assert status == 404 and json.loads(body)["type"] == "ModelNotFoundException"


def test_a_body_over_the_limit_is_refused_at_the_gateway(server, gateway, call):
    key = gateway.tenants.owner_key()
    status, _, body = call("POST", "/predictions/mlp", key, b"x" * (server.config().max_request_size + 1))
    assert status == 413 and json.loads(body)["type"] == "PayloadTooLarge"
    # a chunked body (no length to bound the buffer by) is refused before a byte of it is read
    conn = http.client.HTTPSConnection(call.host, call.port, context=call.tls, timeout=30)
    conn.request(
        "POST",
        "/predictions/mlp",
        body=iter([json.dumps(MLP).encode()]),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 411 and json.loads(resp.read())["type"] == "LengthRequired"
    conn.close()


def test_a_revoked_key_is_refused_at_once(gateway, ca, call):
    _, key = gateway.add_tenant("bob")
    bob = tenant_client(gateway, ca, key)
    assert "class_id" in bob.predict("mlp", MLP)  # and its keep-alive connection stays open
    assert gateway.revoke_tenant("bob")
    with pytest.raises(E.APIError) as refused:  # the very next request, on the kept-alive connection's client
        bob.predict("mlp", MLP)
    assert refused.value.status == 401
    assert call("POST", "/predictions/mlp", key, json.dumps(MLP).encode())[0] == 401
    assert gateway.revoke_tenant("bob") is False


def test_an_over_rate_tenant_gets_429_with_retry_after_while_another_is_served(gateway, ca, call):
    _, slow = gateway.add_tenant("carol", rate=Rate.parse("1/m", 0))
    _, fast = gateway.add_tenant("dave")
    try:
        assert call("POST", "/predictions/mlp", slow, json.dumps(MLP).encode())[0] == 200
        for _ in range(3):
            status, headers, body = call("POST", "/predictions/mlp", slow, json.dumps(MLP).encode())
            assert status == 429 and headers["retry-after"] == "60" and json.loads(body)["type"] == "TooManyRequests"
            assert call("POST", "/predictions/mlp", fast, json.dumps(MLP).encode())[0] == 200
        usage = counted(gateway, lambda u: u.get("dave") and u["dave"].requests == 3)
        assert usage["carol"].rate_limited == 3 and usage["carol"].ok == 1
        assert usage["dave"].ok == 3 and usage["dave"].client_errors == 0
        # the same counts for Prometheus, on the gateway's loopback metrics listener (the keeper's, each second)
        want = [
            'torchship_gateway_requests_total{tenant="carol",status="200"} 1',
            'torchship_gateway_requests_total{tenant="carol",status="429"} 3',
            'torchship_gateway_requests_total{tenant="dave",status="200"} 3',
        ]
        deadline = time.monotonic() + 10
        while True:
            text = requests.get(gateway.status().metrics_url, timeout=10).text
            if all(line in text for line in want) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(line in text for line in want), text
        assert 'torchship_gateway_request_seconds_total{tenant="dave"}' in text
    finally:
        gateway.revoke_tenant("carol")
        gateway.revoke_tenant("dave")


def test_the_upstream_token_never_reaches_a_caller(server, gateway, call, through):
    key = gateway.tenants.owner_key()
    body = json.dumps(MLP).encode()
    call("POST", "/predictions/mlp", key, body)
    call("POST", "/predictions/mlp/1.0", key, body)
    call("POST", "/predictions/mlp", key, b"not json")  # the handler's 400
    call("POST", "/predictions/mlp", "tsk_" + "1" * 64, body)
    call("POST", "/predictions/mlp", key, body, Authorization="Bearer " + server_keys(server)[0])
    call("GET", "/ping", key)
    call("GET", "/nothing", key)
    call("POST", "/explanations/mlp", key, body)
    call("POST", "/v2/models/mlp/infer", key, b'{"inputs": []}')
    answers = b"\n".join(call.seen)
    assert b"class_id" in answers  # real answers were seen
    for secret in server_keys(server):
        assert secret.encode() not in answers
    # the caller's Authorization is replaced, not passed: TorchServe took the gateway's token every time
    assert b"InvalidKeyException" not in answers
    # and nginx's config forwards only the named headers
    conf = (gateway.workdir / "nginx.conf").read_text()
    assert "proxy_pass_request_headers off;" in conf and server_keys(server)[0] not in conf
    for path in (gateway.workdir / "upstream-token.conf", gateway.workdir / "tenant-keys.conf", gateway.tls_dir):
        assert path.stat().st_mode & 0o077 == 0 or path.is_dir()
    assert (gateway.tls_dir / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (gateway.tls_dir / "server-key.pem").stat().st_mode & 0o777 == 0o600


def test_a_rotated_inference_token_is_followed(server, client, gateway, through):
    old = server_keys(server)[0]
    resp = requests.get(
        client.urls["management"] + "/token",
        params={"type": "inference"},
        headers={"Authorization": f"Bearer {server_keys(server)[2]}"},
        timeout=10,
    )
    assert resp.status_code == 200 and server_keys(server)[0] != old
    deadline = time.monotonic() + 15
    while True:
        try:
            assert "class_id" in through.predict("mlp", MLP)
            break
        except E.Unauthorized:
            if time.monotonic() > deadline:
                raise
    assert server_keys(server)[0] in (gateway.workdir / "upstream-token.conf").read_text()


@pytest.fixture(scope="module")
def textgen(client, store, key_dir, public_key, textgen_run, gateway):
    from torchship import archiver

    archiver.package(archiver.example_spec("textgen", textgen_run, "1.0"), store, key_dir, force=True)
    deploy_example(client, store, "textgen", public_key)
    yield
    client.unregister("textgen", "1.0")


def test_a_streamed_answer_passes_chunk_by_chunk(textgen, through):
    start, arrivals, chunks = time.perf_counter(), [], []
    for chunk in through.stream("textgen", {"prompt": "This film", "max_new_tokens": 300, "seed": 7}):
        arrivals.append(time.perf_counter() - start)
        chunks.append(chunk)
    assert len("".join(chunks)) == 300 and len(chunks) >= 10
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])


def test_cli_serve_start_tls_keys_status_stop(tmp_path):
    """`torchship serve start --tls` in a project of its own (free ports), then keys, status and stop."""
    from torchship.ops.server import free_port_overrides
    from torchship.sdk.config import read_properties, write_properties

    from .conftest import ROOT

    props = {**read_properties(ROOT / "config.properties"), **free_port_overrides()}
    write_properties(tmp_path / "config.properties", props)
    env = {**os.environ, "TORCHSHIP_HOME": str(tmp_path)}
    port, metrics_port = free_ports(2)
    listen = f"127.0.0.1:{port}"

    def ts(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TORCHSHIP, *args], capture_output=True, text=True, timeout=180, env=env)

    assert ts("serve", "start", "--listen", listen).returncode == 2  # no listener without TLS
    assert ts("serve", "start", "--tls", "--metrics-listen", "0.0.0.0:9999").returncode != 0  # loopback only
    r = ts("serve", "start", "--tls", "--listen", listen, "--metrics-listen", f"127.0.0.1:{metrics_port}")
    gw_dir = tmp_path / ".torchship" / "gateway"
    try:
        assert r.returncode == 0, r.stderr
        assert f"https://{listen}" in r.stdout and str(tmp_path / ".torchship" / "tls" / "ca.pem") in r.stdout
        assert "already running" in ts("serve", "start", "--tls").stdout
        status = json.loads(ts("serve", "status", "--json").stdout)
        assert status["gateway"]["running"] and status["gateway"]["url"] == f"https://{listen}"
        assert status["gateway"]["keeper_pid"]
        made = json.loads(ts("keys", "create", "erin", "--models", "mlp", "--rate", "5/s", "--json").stdout)
        assert made["key"].startswith("tsk_") and made["gateway_running"] is True
        assert made["key"] not in (gw_dir / "tenants.json").read_text()
        assert made["key"] in (gw_dir / "tenant-keys.conf").read_text()
        pinned = ssl.create_default_context(cafile=str(tmp_path / ".torchship" / "tls" / "ca.pem"))
        host, port = listen.split(":")
        conn = http.client.HTTPSConnection(host, int(port), context=pinned, timeout=30)
        conn.request("GET", "/ping", headers={"Authorization": f"Bearer {made['key']}"})
        assert conn.getresponse().status == 200
        conn.close()
        for _ in range(50):  # nginx writes the request's log line just after its answer
            listed = json.loads(ts("keys", "list", "--tenants", "--json").stdout)
            erin = next(r for r in listed if r["name"] == "erin")
            if erin["usage"]:
                break
            time.sleep(0.1)
        assert erin["models"] == ["mlp"] and erin["rate"] == {"rate": "5/s", "burst": 5}
        assert erin["usage"]["ok"] == 1 and erin["usage"]["requests"] == 1 and "key" not in erin
        assert "erin" in ts("keys", "list", "--tenants").stdout
        assert ts("keys", "revoke", "erin").returncode == 0
        assert ts("keys", "revoke", "erin").returncode == 7
    finally:
        r = ts("serve", "stop")
    assert r.returncode == 0 and "TLS gateway stopped." in r.stdout and "TorchServe stopped." in r.stdout
    assert not (gw_dir / "state.json").exists()
    assert not [p for p in _nginx_masters() if str(gw_dir) in " ".join(p)]


def _nginx_masters() -> list[list[str]]:
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        line = proc.info["cmdline"] or []
        if (line and line[0].startswith("nginx: master")) or "torchship.gateway.keeper" in " ".join(line):
            out.append(line)
    return out


def test_nginx_is_the_one_we_asked_for():
    assert Path(nginx_executable()).name == "nginx"
    version = subprocess.run([nginx_executable(), "-v"], capture_output=True, text=True).stderr
    assert "nginx/" in version


def test_tenant_store_secrets_stay_private(gateway):
    store = TenantStore(gateway.workdir)
    assert store.keys_path.stat().st_mode & 0o777 == 0o600
    assert store.owner_key_path.stat().st_mode & 0o777 == 0o600
    assert store.owner_key() not in store.meta_path.read_text()
