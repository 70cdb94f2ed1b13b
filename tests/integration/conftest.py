"""A real TorchServe for the integration tests: free ports, its own working folder and TMPDIR,
token auth on, always stopped at the end."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import threading
from pathlib import Path

import pytest

from torchship import LocalServer, archiver
from torchship.ops.deploy import deploy
from torchship.ops.server import free_port_overrides

ROOT = Path(__file__).resolve().parents[2]


def start_server(workdir: Path, store: Path, **extra: str) -> LocalServer:
    server = LocalServer(
        ROOT / "config.properties", workdir, model_store=store, overrides={**free_port_overrides(), **extra}
    )
    server.start(timeout=120)
    return server


# the gateway's tests need Debian's nginx
NEEDS_NGINX = pytest.mark.skipif(
    not (os.environ.get("TORCHSHIP_NGINX") or shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)),
    reason="nginx is not installed (scripts/setup-os.sh nginx)",
)


class Callers:
    """`threads` callers, each running `_run(i)` (i: its number) until `stop` is set when the block ends."""

    def __init__(self, threads: int = 2) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


class Caller:
    """Raw https calls to a gateway (pinning its CA), one connection each (no keep-alive); every answer, headers
    and body, is kept in `seen` (the token-leak checks read them)."""

    def __init__(self, url: str, ca: Path) -> None:
        host, port = url.removeprefix("https://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.tls = ssl.create_default_context(cafile=str(ca))
        self.seen: list[bytes] = []

    def __call__(
        self, method: str, path: str, key: str | None = None, body: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.tls, timeout=60)
        try:
            sent = {k.replace("_", "-"): v for k, v in headers.items()}
            if key is not None:
                sent["Authorization"] = f"Bearer {key}"
            if body is not None:
                sent.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            got = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        self.seen.append(json.dumps(got).encode() + data)
        return resp.status, got, data

    def chunked(self, path: str, key: str, body: bytes) -> tuple[int, bytes]:
        """A POST whose body is sent chunked (no Content-Length)."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.tls, timeout=60)
        try:
            conn.putrequest("POST", path)
            conn.putheader("Authorization", f"Bearer {key}")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def start_gateway(server: LocalServer):
    """The TLS gateway of `server` (its folder beside the server's, as a project has it), on free ports."""
    from torchship.gateway import Gateway
    from torchship.ops.server import free_ports

    gw = Gateway(server)
    port, metrics_port = free_ports(2)
    assert gw.start(listen=f"127.0.0.1:{port}", metrics_listen=f"127.0.0.1:{metrics_port}")
    return gw


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model_store")


@pytest.fixture(scope="session")
def server(tmp_path_factory, store):
    srv = start_server(tmp_path_factory.mktemp("server"), store)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def public_key(key_dir) -> Path:
    archiver.ensure_keys(key_dir)
    return archiver.public_key_path(key_dir)


@pytest.fixture(scope="session")
def mlp_archive(mlp_run, store, key_dir) -> Path:
    """mlp-1.0.mar, built and signed."""
    return archiver.package(archiver.example_spec("mlp", mlp_run, "1.0"), store, key_dir).path


def deploy_example(client, store, name: str, public_key):
    """Example model `name` 1.0 verified and registered with its serving defaults (one worker, its
    batching), as `torchship deploy` does."""
    serving = archiver.EXAMPLES[name].serving
    return deploy(
        client,
        store,
        name,
        "1.0",
        workers=1,
        batch_size=serving["batch_size"],
        max_batch_delay=serving["max_batch_delay"],
        public_key=public_key,
    )


@pytest.fixture(scope="session")
def mlp_deployed(client, store, mlp_archive, public_key):
    """mlp 1.0 verified and registered with dynamic batching, as `torchship deploy` does."""
    return deploy_example(client, store, "mlp", public_key)


@pytest.fixture(scope="session")
def example_archives(store, key_dir, mlp_archive, sentiment_run, fashion_run, recommender_run):
    """<name>-1.0.mar for the four example models, built and signed once per session."""
    runs = {"sentiment": sentiment_run, "fashion": fashion_run, "recommender": recommender_run}
    out = {"mlp": mlp_archive}
    for name, run in runs.items():
        out[name] = archiver.package(archiver.example_spec(name, run, "1.0"), store, key_dir).path
    return out
