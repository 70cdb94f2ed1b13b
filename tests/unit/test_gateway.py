"""The TLS gateway without a server: its nginx config, the local CA, the tenant key store, the usage summary,
how the client finds and reaches a gateway, and the CLI's refusals."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from torchship import TorchServe
from torchship import errors as E
from torchship.cli import main
from torchship.gateway import Gateway, GatewaySpec, Listen, Rate, TenantStore, Upstream, UpstreamServer, render_conf
from torchship.gateway.nginx import FORWARDED_HEADERS, Limits, render_tenant_keys, render_upstream_token
from torchship.gateway.tls import local_certificates, own_certificates, server_names
from torchship.gateway.usage import NO_KEY, UNKNOWN_KEY, Tally, summarize
from torchship.ops.server import LocalServer
from torchship.sdk.client import GatewayKeys
from torchship.sdk.config import GatewayInfo

NGINX = os.environ.get("TORCHSHIP_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
HAS_NGINX = os.access(NGINX, os.X_OK)
TOKEN = "Ab-cd_E1"


# ---------------------------------------------------------------- rates and names


@pytest.mark.parametrize(
    ("text", "burst", "nginx", "retry_after", "default_burst"),
    [
        ("10", None, "10r/s", 1, 10),
        ("10/s", None, "10r/s", 1, 10),
        ("600/m", None, "600r/m", 1, 10),
        ("1/m", None, "1r/m", 60, 1),
        ("0.5/s", None, "30r/m", 2, 1),
        ("5/s", 0, "5r/s", 1, 0),
    ],
)
def test_rates_are_what_nginx_counts(text, burst, nginx, retry_after, default_burst):
    rate = Rate.parse(text, burst)
    assert (rate.nginx, rate.retry_after, rate.burst) == (nginx, retry_after, default_burst)


@pytest.mark.parametrize("text", ["", "0", "-1/s", "ten", "10/h", "0.001/m", "1000001/s"])
def test_bad_rates_are_refused(text):
    with pytest.raises(E.BadInput):
        Rate.parse(text)


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443, True),
        ("localhost:9443", "localhost", 9443, True),
        ("[::1]:8443", "::1", 8443, True),
        ("0.0.0.0:443", "0.0.0.0", 443, False),
        ("10.1.2.3:8443", "10.1.2.3", 8443, False),
    ],
)
def test_listen_addresses(text, host, port, loopback):
    where = Listen.parse(text)
    assert (where.host, where.port, where.loopback) == (host, port, loopback)
    assert Listen.parse(str(where)) == where


@pytest.mark.parametrize("text", ["8443", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "a b:1", 'x";:1'])
def test_bad_listen_addresses_are_refused(text):
    with pytest.raises(E.ConfigError):
        Listen.parse(text)


# ---------------------------------------------------------------- the tenant key store


@pytest.fixture
def store(tmp_path) -> TenantStore:
    return TenantStore(tmp_path / "gateway")


def test_a_key_is_given_once_and_its_secret_is_only_in_the_private_map(store):
    tenant, secret = store.create("alice", models=["mlp", "sentiment"], rate=Rate.parse("10/s"))
    assert secret.startswith("tsk_") and len(secret) == 4 + 64 and secret[4:] == secret[4:].lower()
    assert tenant.models == ("mlp", "sentiment") and str(tenant.rate) == "10/s" and tenant.key_id in tenant.sha256
    assert secret not in store.meta_path.read_text() and secret in store.keys_path.read_text()
    for path in (store.keys_path, store.meta_path):
        assert path.stat().st_mode & 0o777 == 0o600
    assert store.secrets() == {"alice": secret}
    assert [t.name for t in store.all()] == ["alice"] and store.get("alice") == tenant
    _, other = store.create("bob")
    assert other != secret and store.secrets() == {"alice": secret, "bob": other}


def test_names_duplicates_and_the_owner_are_refused(store):
    store.create("alice")
    for bad in ("alice", "Alice", "a b", "", "-x", "x" * 64, "owner"):
        with pytest.raises(E.BadInput):
            store.create(bad)
    with pytest.raises(E.BadInput):
        store.create("carol", models=["../etc"])
    with pytest.raises(E.BadInput):
        store.create("carol", models=[])
    with pytest.raises(E.BadInput):
        store.revoke("owner")


def test_revoking_removes_the_secret(store):
    _, secret = store.create("alice")
    store.create("bob")
    assert store.revoke("alice") is True and store.revoke("alice") is False
    assert secret not in store.keys_path.read_text() and [t.name for t in store.all()] == ["bob"]


def test_the_owner_key_is_made_once_and_kept(store):
    key = store.owner_key()
    assert store.owner_key() == key and store.owner_key_path.read_text().strip() == key
    assert store.owner_key_path.stat().st_mode & 0o777 == 0o600
    assert store.get("owner").models is None and store.get("owner").rate is None


def test_a_shared_key_map_is_refused(store):
    store.create("alice")
    os.chmod(store.keys_path, 0o644)
    with pytest.raises(E.ConfigError, match="chmod 600"):
        store.secrets()


def test_a_malformed_secret_is_never_written():
    with pytest.raises(E.ConfigError):
        render_tenant_keys({"alice": 'tsk_x" "owner'})


# ---------------------------------------------------------------- certificates


def test_the_local_ca_signs_a_server_certificate_for_the_names(tmp_path):
    certs = local_certificates(tmp_path / "tls", server_names("10.0.0.7"))
    assert certs.ca is not None
    for key in (tmp_path / "tls" / "ca-key.pem", certs.key):
        assert key.stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    leaf = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(n) for n in san.get_values_for_type(x509.IPAddress)
    }
    assert {"localhost", "127.0.0.1", "::1", "10.0.0.7"} <= names
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Python's own verifier accepts the chain (strict X.509 checks included where this Python has them)
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_verify_locations(cafile=str(certs.ca))


def test_the_server_certificate_is_issued_again_only_when_needed(tmp_path):
    first = local_certificates(tmp_path / "tls", ["localhost", "127.0.0.1"])
    pem = first.cert.read_bytes()
    ca_pem = first.ca.read_bytes()
    assert local_certificates(tmp_path / "tls", ["localhost"]).cert.read_bytes() == pem  # covered already
    again = local_certificates(tmp_path / "tls", ["localhost", "gw.example"])  # a new name
    second = again.cert.read_bytes()
    assert second != pem and again.ca.read_bytes() == ca_pem  # same CA
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=380)
    renewed = local_certificates(tmp_path / "tls", ["localhost", "gw.example"], now=later)  # close to its end
    assert renewed.cert.read_bytes() != second


def test_own_certificates_must_match_and_be_private(tmp_path):
    a = local_certificates(tmp_path / "a", ["localhost"])
    b = local_certificates(tmp_path / "b", ["localhost"])
    assert own_certificates(a.cert, a.key).ca is None
    with pytest.raises(E.ConfigError, match="not the private key"):
        own_certificates(a.cert, b.key)
    os.chmod(a.key, 0o644)
    with pytest.raises(E.ConfigError, match="private"):
        own_certificates(a.cert, a.key)
    with pytest.raises(E.ConfigError):
        own_certificates(a.ca, tmp_path / "nothing.pem")


# ---------------------------------------------------------------- the nginx config


def spec(tmp_path: Path, store: TenantStore | None = None, **kw) -> GatewaySpec:
    certs = local_certificates(tmp_path / "tls", ["localhost", "127.0.0.1"])
    workdir = tmp_path / "gateway"
    tenants = tuple(store.all()) if store else ()
    return GatewaySpec(
        workdir=workdir,
        listen=(Listen("127.0.0.1", 18443),),
        certificates=certs,
        upstream=Upstream("torchserve", (UpstreamServer("127.0.0.1", 18080),)),
        tenants=tenants,
        **kw,
    )


def nginx_test(s: GatewaySpec, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    for sub in ("logs", "tmp"):
        (s.workdir / sub).mkdir(parents=True, exist_ok=True)
    if not s.tenant_keys_path.exists():
        s.tenant_keys_path.write_text(render_tenant_keys({}))
    s.upstream_token_path.write_text(render_upstream_token(token))
    conf = s.workdir / "nginx.conf"
    conf.write_text(render_conf(s))
    args = ["-p", str(s.workdir), "-c", str(conf), "-e", str(s.workdir / "logs" / "error.log")]
    return subprocess.run([NGINX, "-t", "-q", *args], capture_output=True, text=True, timeout=30)


def test_the_config_is_tls_only_inference_only_and_keeps_the_token_out(tmp_path):
    text = render_conf(spec(tmp_path))
    assert "listen 127.0.0.1:18443 ssl;" in text and "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "listen 127.0.0.1:18443;" not in text and "http2" not in text
    assert "proxy_pass_request_headers off;" in text and "proxy_buffering off;" in text
    assert 'proxy_set_header Connection "";' in text and "proxy_http_version 1.1;" in text
    assert "keepalive 32;" in text
    # the caller's Authorization is replaced by TorchServe's token; no other header goes unless named
    assert "proxy_set_header Authorization $torchserve_authorization;" in text
    assert "$http_authorization" not in text.split("proxy_set_header", 1)[1]
    assert [h for h, _ in FORWARDED_HEADERS if h.lower() == "authorization"] == []
    # only the inference routes and nothing of management or metrics
    proxied = [line.strip() for line in text.splitlines() if "proxy_pass " in line]
    assert proxied == ["proxy_pass http://torchserve$uri;"] * 3 + ["proxy_pass http://torchserve/ping;"]
    assert "18081" not in text and "18082" not in text and "/models" not in text.replace("/v2/models/", "")
    assert TOKEN not in text  # the token lives in its 0600 include only
    assert f"client_max_body_size {Limits().max_body_bytes};" in text
    assert "limit_req_status 429;" in text and "add_header Retry-After $retry_after always;" in text
    assert "if ($http_transfer_encoding) {\n            return 411;" in text  # no chunked bodies


def test_tenants_become_maps_and_one_zone_per_rate(tmp_path):
    store = TenantStore(tmp_path / "gateway")
    store.create("alice", models=["mlp", "sentiment.v2"], rate=Rate.parse("10/s"))
    store.create("bob", rate=Rate.parse("10/s"))
    store.create("carol", models=["mlp"], rate=Rate.parse("1/m", 0))
    store.create("dave")
    text = render_conf(spec(tmp_path, store))
    assert text.count("limit_req_zone ") == 2
    assert "limit_req zone=rate_10r_s_b10 burst=10 nodelay;" in text and "limit_req zone=rate_1r_m_b0 nodelay;" in text
    assert '"~^0:alice:sentiment\\.v2$" 1;' in text and '"~^0:carol:mlp$" 1;' in text
    all_models = text.split("$tenant_all_models {", 1)[1].split("}", 1)[0]
    assert '"bob" 1;' in all_models and '"dave" 1;' in all_models and "alice" not in all_models
    assert '"carol" 60;' in text  # Retry-After of 1/m
    for secret in store.secrets().values():
        assert secret not in text


@pytest.mark.skipif(not HAS_NGINX, reason="nginx is not installed")
def test_nginx_accepts_the_config(tmp_path):
    store = TenantStore(tmp_path / "gateway")
    store.create("alice", models=["mlp"], rate=Rate.parse("5/s"))
    store.create("carol", rate=Rate.parse("1/m", 0))
    store.owner_key()
    done = nginx_test(spec(tmp_path, store))
    assert done.returncode == 0, done.stderr
    assert nginx_test(spec(tmp_path, store), token=None).returncode == 0  # a server without token auth


@pytest.mark.skipif(not HAS_NGINX, reason="nginx is not installed")
def test_nginx_refuses_a_broken_config_so_the_check_can_fail(tmp_path):
    s = spec(tmp_path)
    assert nginx_test(s).returncode == 0
    (s.workdir / "nginx.conf").write_text(render_conf(s).replace("ssl_protocols TLSv1.2", "ssl_protocols TLSv9"))
    args = ["-p", str(s.workdir), "-c", str(s.workdir / "nginx.conf"), "-e", str(s.workdir / "logs" / "error.log")]
    assert subprocess.run([NGINX, "-t", "-q", *args], capture_output=True, timeout=30).returncode != 0


def test_paths_nginx_would_misread_are_refused(tmp_path):
    bad = tmp_path / "a$b"
    certs = local_certificates(tmp_path / "tls", ["localhost"])
    with pytest.raises(E.ConfigError):
        render_conf(
            GatewaySpec(bad, (Listen("127.0.0.1", 1),), certs, Upstream("torchserve", (UpstreamServer("h", 1),)))
        )
    with pytest.raises(E.ConfigError):
        render_upstream_token('x";}')


# ---------------------------------------------------------------- usage


def test_usage_counts_each_tenant_and_the_strangers(tmp_path):
    log = tmp_path / "access.log"
    lines = [
        {"tenant": "alice", "key": "given", "status": 200, "time": "t1"},
        {"tenant": "alice", "key": "given", "status": 429, "time": "t2"},
        {"tenant": "alice", "key": "given", "status": 403, "time": "t3"},
        {"tenant": "bob", "key": "given", "status": 503, "time": "t1"},
        {"tenant": "", "key": "none", "status": 401, "time": "t1"},
        {"tenant": "", "key": "given", "status": 401, "time": "t1"},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    usage = summarize([tmp_path / "access.log.1", log])
    assert (usage["alice"].requests, usage["alice"].ok, usage["alice"].rate_limited) == (3, 1, 1)
    assert usage["alice"].client_errors == 2 and usage["alice"].last == "t3"
    assert usage["bob"].server_errors == 1
    assert usage[NO_KEY].requests == 1 and usage[UNKNOWN_KEY].requests == 1


def test_the_tally_reads_what_was_appended_and_follows_a_rotation(tmp_path):
    log = tmp_path / "access.log"
    line = lambda tenant, status, t=0.002: json.dumps(  # noqa: E731
        {"tenant": tenant, "key": "given", "status": status, "request_time": t, "path": "/predictions/mlp"}
    )
    tally = Tally(log)
    assert tally.update() == 0  # no log yet
    log.write_text(line("alice", 200) + "\n" + line("alice", 429) + "\n" + line("bob", 200)[:20])  # bob's is cut
    assert tally.update() == 2
    with open(log, "a") as f:  # nginx finishes bob's line, and a live rollout's mirror is logged
        f.write(line("bob", 200)[20:] + "\n")
        f.write(json.dumps({"tenant": "bob", "status": 200, "path": "/_torchship_shadow"}) + "\n")
    assert tally.update() == 1
    text = tally.prometheus()
    assert 'torchship_gateway_requests_total{tenant="alice",status="200"} 1' in text
    assert 'torchship_gateway_requests_total{tenant="alice",status="429"} 1' in text
    assert 'torchship_gateway_requests_total{tenant="bob",status="200"} 1' in text  # the mirror is no request
    assert 'torchship_gateway_request_seconds_total{tenant="alice"} 0.004' in text
    log.rename(tmp_path / "access.log.1")  # rotated: the new file is read from its start
    log.write_text(json.dumps({"tenant": "", "key": "none", "status": 401}) + "\n")
    assert tally.update() == 1
    assert f'torchship_gateway_requests_total{{tenant="{NO_KEY}",status="401"}} 1' in tally.prometheus()


# ---------------------------------------------------------------- how a client finds the gateway


def fake_nginx(tmp_path: Path) -> subprocess.Popen[bytes]:
    """A process whose command line says nginx (a sleep under that name)."""
    link = tmp_path / "nginx"
    link.symlink_to(shutil.which("sleep") or "/bin/sleep")
    proc = subprocess.Popen([str(link), "60"])
    deadline = time.monotonic() + 10
    while b"nginx" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)  # until the process shows its name
    return proc


@pytest.fixture
def served(tmp_path):
    """A project-like layout: server/ with config and key file, gateway/ with a state file of a live "nginx"."""
    server = tmp_path / "server"
    server.mkdir()
    (server / "config.properties").write_text(
        "inference_address=http://127.0.0.1:18080\nmanagement_address=http://127.0.0.1:18081\n"
        "metrics_address=http://127.0.0.1:18082\nmodel_store=ms\n"
    )
    (server / "key_file.json").write_text(
        json.dumps({"management": {"key": "M"}, "inference": {"key": "I"}, "API": {"key": "A"}})
    )
    gw = tmp_path / "gateway"
    gw.mkdir()
    certs = local_certificates(tmp_path / "tls", ["localhost", "127.0.0.1"])
    (gw / "owner.key").write_text("tsk_" + "a" * 64 + "\n")
    proc = fake_nginx(tmp_path)
    (gw / "nginx.pid").write_text(f"{proc.pid}\n")
    state = {
        "url": "https://127.0.0.1:18443",
        "ca_file": str(certs.ca),
        "key_file": str(gw / "owner.key"),
        "pid_file": str(gw / "nginx.pid"),
        "server": str(server),
    }
    (gw / "state.json").write_text(json.dumps(state))
    yield server, gw, proc
    proc.kill()
    proc.wait()


def test_from_config_goes_through_a_running_gateway(served):
    server, gw, _ = served
    ts = TorchServe.from_config(server / "config.properties")
    assert ts.urls["inference"] == "https://127.0.0.1:18443"
    assert ts.urls["management"] == "http://127.0.0.1:18081" and ts.urls["metrics"] == "http://127.0.0.1:18082"
    assert ts.ca_file == gw.parent / "tls" / "ca.pem" and isinstance(ts.keys, GatewayKeys)
    assert ts.keys.key("inference") == "tsk_" + "a" * 64 and ts.keys.key("management") == "M"
    assert "tsk_" not in repr(ts) and "M" not in repr(ts.keys).replace("GatewayKeys", "")
    route = ts._direct("inference")  # the keep-alive fast path, over TLS with only the project's CA
    assert route is not None and route.tls is not None
    assert route.tls.verify_mode == ssl.CERT_REQUIRED and route.tls.check_hostname
    assert len(route.tls.get_ca_certs()) == 1
    direct = TorchServe.from_config(server / "config.properties", gateway=False)
    assert direct.urls["inference"] == "http://127.0.0.1:18080" and direct.ca_file is None


def test_a_dead_or_foreign_gateway_is_not_used(served):
    server, gw, proc = served
    state = json.loads((gw / "state.json").read_text())
    (gw / "state.json").write_text(json.dumps({**state, "server": str(gw.parent / "other")}))
    assert GatewayInfo.for_server(server) is None
    (gw / "state.json").write_text(json.dumps(state))
    assert GatewayInfo.for_server(server) is not None
    proc.kill()
    proc.wait()
    assert GatewayInfo.for_server(server) is None
    assert TorchServe.from_config(server / "config.properties").urls["inference"] == "http://127.0.0.1:18080"
    with pytest.raises(E.ConfigError, match="serve start --tls"):
        TorchServe.from_config(server / "config.properties", gateway=True)


def test_https_goes_the_fast_way_only_with_a_pinned_ca(tmp_path):
    assert TorchServe(inference_url="https://example.invalid:8443")._direct("inference") is None
    ca = local_certificates(tmp_path / "tls", ["localhost"]).ca
    route = TorchServe(inference_url="https://example.invalid:8443", ca_file=ca)._direct("inference")
    assert route is not None and (route.host, route.port) == ("example.invalid", 8443)


# ---------------------------------------------------------------- the keeper's decisions


def test_the_token_is_rotated_only_when_it_expires_soon(tmp_path):
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    (server_dir / "config.properties").write_text("inference_address=http://127.0.0.1:1\ntoken_expiration_min=60\n")
    gateway = Gateway(LocalServer(server_dir / "config.properties", server_dir))

    def expires_in(minutes: float) -> None:
        when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes)
        stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # Java's Instant: nanoseconds
        raw = {"inference": {"key": "I", "expiration time": stamp}}
        (server_dir / "key_file.json").write_text(json.dumps({**raw, "management": {"key": "M"}, "API": {"key": "A"}}))

    expires_in(50)
    assert not gateway._expires_soon(None)
    expires_in(6)
    assert not gateway._expires_soon(None)
    expires_in(4)  # within 5 minutes (a quarter of the lifetime, at most 5 minutes)
    assert gateway._expires_soon(None)
    expires_in(-1)
    assert gateway._expires_soon(None)
    (server_dir / "config.properties").write_text("inference_address=http://127.0.0.1:1\ntoken_expiration_min=2\n")
    expires_in(0.75)  # a 2-minute token: rotated in its last 30 seconds only
    assert not gateway._expires_soon(None)
    expires_in(0.25)
    assert gateway._expires_soon(None)
    assert gateway._server_token() == "I"


def test_a_gateway_refuses_to_start_without_its_server(tmp_path):
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    (server_dir / "config.properties").write_text("inference_address=http://127.0.0.1:1\n")
    gateway = Gateway(LocalServer(server_dir / "config.properties", server_dir))
    with pytest.raises(E.ServerStartError, match="not running"):
        gateway.start()
    with pytest.raises(E.ConfigError, match="both"):
        gateway.start(cert=tmp_path / "c.pem")
    assert gateway.status().running is False and gateway.stop() is False


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "config.properties").write_text("inference_address=http://127.0.0.1:1\nmodel_store=ms\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)
    for var in ("TS_MANAGEMENT_URL", "TS_INFERENCE_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_the_gateway_options_need_tls(project, capsys):
    for args in (["--listen", "0.0.0.0:8443"], ["--cert", "config.properties"], ["--key", "config.properties"]):
        assert main(["serve", "start", *args]) == 2
        assert "add --tls" in capsys.readouterr().err


def test_keys_create_prints_the_key_once_and_list_never(project, capsys):
    assert main(["keys", "create", "alice", "--models", "mlp,sentiment", "--rate", "20/s"]) == 0
    out = capsys.readouterr()
    secret = next(word for word in out.out.split() if word.startswith("tsk_"))
    assert "not running" in out.err  # the key works once the gateway runs
    assert main(["keys", "list", "--tenants"]) == 0
    listed = capsys.readouterr().out
    assert "alice" in listed and "mlp, sentiment" in listed and "20/s (burst 20)" in listed and secret not in listed
    assert main(["keys", "list", "--tenants", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "alice" and secret not in json.dumps(rows)
    assert main(["keys", "list"]) == 0  # the model keys, as before, and a pointer to the tenants
    assert "keys list --tenants" in capsys.readouterr().out
    assert main(["keys", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # still the model keys only
    assert main(["keys", "create", "alice"]) == 7
    assert main(["keys", "create", "owner"]) == 7
    assert main(["keys", "create", "bob", "--burst", "3"]) == 7
    assert main(["keys", "revoke", "alice"]) == 0
    assert main(["keys", "revoke", "alice"]) == 7
    capsys.readouterr()


def test_status_shows_no_gateway_when_none_ran(project, capsys):
    assert main(["serve", "status", "--json"]) == 3
    status = json.loads(capsys.readouterr().out)
    assert status["gateway"]["running"] is False and status["gateway"]["url"] is None


def test_tenant_changes_are_serialized(tmp_path):
    """Two processes making keys at once: both keys end up in the map (the folder lock)."""
    code = (
        "import sys; from pathlib import Path; from torchship.gateway import TenantStore\n"
        "from torchship.gateway.files import locked\n"
        "folder = Path(sys.argv[1])\n"
        "for i in range(10):\n"
        "    with locked(folder):\n"
        "        TenantStore(folder).create(f'{sys.argv[2]}{i}')\n"
    )
    folder = tmp_path / "gateway"
    procs = [subprocess.Popen([os.sys.executable, "-c", code, str(folder), p]) for p in ("a", "b")]
    deadline = time.monotonic() + 60
    for p in procs:
        assert p.wait(timeout=max(1, deadline - time.monotonic())) == 0
    store = TenantStore(folder)
    assert len(store.all()) == 20 and len(store.secrets()) == 20
