"""The client's direct keep-alive path (predict and the other calls without query parameters),
against a small HTTP/1.1 server in a thread: it keeps every behaviour of the requests path
(keys, rotation, errors, limits, headers, proxies) and does no per-call file or log work.
Behaviour only: the figures are benchmarks/bench_client.py's."""

from __future__ import annotations

import builtins
import gzip
import json
import os
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import numpy as np
import pytest
import requests

from torchship import TorchServe
from torchship import errors as E
from torchship.sdk.auth import KeyFile, StaticKeys
from torchship.sdk.logs import ServerLogs

from .fake_transport import FakeTransport, session_with


@dataclass
class Seen:
    method: str
    path: str
    headers: Message
    body: bytes
    port: int


@dataclass
class Answer:
    status: int = 200
    body: bytes | object = field(default_factory=lambda: {"ok": True})
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # close the connection after answering, without saying so
    delay: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall

    def log_message(self, *args):  # quiet
        pass

    def _any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, self.path, self.headers, body, self.client_address[1])
        self.server.seen.append(seen)
        answer = self.server.app(seen)
        if answer.delay:
            time.sleep(answer.delay)
        payload = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        try:
            self.send_response(answer.status)
            headers = {"Content-Type": "application/json", **answer.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            pass
        if answer.close:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _any


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.seen = []
    srv.app = lambda seen: Answer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def client(srv, **kw) -> TorchServe:
    kw.setdefault("keys", StaticKeys("MKEY", "IKEY", "AKEY"))
    kw.setdefault("backoff", 0)
    return TorchServe(url(srv), url(srv), url(srv), **kw)


def write_keys(path, m, i, a="AKEY"):
    path.write_text(json.dumps({"management": {"key": m}, "inference": {"key": i}, "API": {"key": a}}))


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- one connection, no per-call work


def test_predictions_share_one_keep_alive_connection_and_decode_json(server):
    server.app = lambda seen: Answer(body={"label": 3, "echo": json.loads(seen.body)})
    with client(server) as ts:
        answers = [ts.predict("mlp", {"data": [i, 0.5]}) for i in range(5)]
    assert answers == [{"label": 3, "echo": {"data": [i, 0.5]}} for i in range(5)]
    assert len({s.port for s in server.seen}) == 1
    first = server.seen[0]
    assert (first.method, first.path, first.body) == ("POST", "/predictions/mlp", b'{"data":[0,0.5]}')
    assert first.headers["Authorization"] == "Bearer IKEY"
    assert first.headers["Content-Type"] == "application/json"


def test_predict_reads_the_key_file_once_and_no_file_or_log_per_call(server, tmp_path):
    kf = tmp_path / "key_file.json"
    write_keys(kf, "M1", "I1")
    logs = mock.create_autospec(ServerLogs, instance=True)
    ts = client(server, keys=KeyFile(kf), logs=logs)
    reads = []
    real_read = KeyFile._read

    def counted(self):
        reads.append(1)
        return real_read(self)

    with mock.patch.object(KeyFile, "_read", counted):
        ts.predict("mlp", [1.0])  # the first call reads the key file
        touched = {"open": 0, "stat": 0}
        real_open, real_stat = builtins.open, os.stat

        def counting_open(*a, **k):
            touched["open"] += 1
            return real_open(*a, **k)

        def counting_stat(*a, **k):
            touched["stat"] += 1
            return real_stat(*a, **k)

        with mock.patch.object(builtins, "open", counting_open), mock.patch.object(os, "stat", counting_stat):
            for _ in range(20):
                ts.predict("mlp", [1.0])
                ts.predict("mlp", np.zeros(3, dtype=np.float32))
    assert len(reads) == 1
    assert touched == {"open": 0, "stat": 0}
    assert logs.method_calls == []  # the worker-failure cause is for register and scale only
    assert {s.headers["Authorization"] for s in server.seen} == {"Bearer I1"}


def test_a_key_file_rewritten_by_a_restart_is_picked_up_on_the_refusal(server, tmp_path):
    kf = tmp_path / "key_file.json"
    write_keys(kf, "M1", "I1")
    accepted = {"key": "Bearer I1"}

    def app(seen):
        if seen.headers["Authorization"] != accepted["key"]:
            return Answer(400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."})
        return Answer(body={"ok": 1})

    server.app = app
    ts = client(server, keys=KeyFile(kf))
    assert ts.predict("mlp", [1]) == {"ok": 1}
    write_keys(kf, "M2", "I2")  # the server restarted with new keys
    accepted["key"] = "Bearer I2"
    assert ts.predict("mlp", [1]) == {"ok": 1}
    assert ts.predict("mlp", [1]) == {"ok": 1}
    assert [s.headers["Authorization"] for s in server.seen] == ["Bearer I1", "Bearer I1", "Bearer I2", "Bearer I2"]


def test_an_expired_key_is_rotated_with_the_api_key(server, tmp_path):
    kf = tmp_path / "key_file.json"
    write_keys(kf, "M1", "I1")
    accepted = {"key": "Bearer I1"}

    def app(seen):
        if seen.path.startswith("/token"):
            assert seen.headers["Authorization"] == "Bearer AKEY" and seen.path == "/token?type=inference"
            write_keys(kf, "M1", "I2")  # TorchServe rewrites the key file and answers 200
            accepted["key"] = "Bearer I2"
            return Answer(body=b"")
        if seen.headers["Authorization"] != accepted["key"]:
            return Answer(400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."})
        return Answer(body={"ok": 1})

    server.app = app
    ts = client(server, keys=KeyFile(kf))
    assert ts.predict("mlp", [1]) == {"ok": 1}
    accepted["key"] = "expired"
    assert ts.predict("mlp", [1]) == {"ok": 1}
    assert [s.path for s in server.seen] == [
        "/predictions/mlp",
        "/predictions/mlp",
        "/token?type=inference",
        "/predictions/mlp",
    ]


# ---------------------------------------------------------------- errors and limits, as before


def test_a_body_over_the_servers_limit_is_refused_before_sending(server):
    ts = client(server, max_request_size=10)
    with pytest.raises(E.PayloadTooLarge, match="not sent"):
        ts.predict("mlp", {"data": list(range(100))})
    assert server.seen == []


def test_error_answers_map_as_on_the_requests_path(server):
    answers = {
        "/predictions/gone": Answer(404, {"code": 404, "type": "ModelNotFoundException", "message": "no such model"}),
        "/predictions/big": Answer(413, b""),
        "/predictions/bad": Answer(500, {"code": 500, "type": "InternalServerException", "message": "boom"}),
    }
    server.app = lambda seen: answers[seen.path]
    ts = client(server, retries=0)
    with pytest.raises(E.ModelNotFound, match="no such model"):
        ts.predict("gone", [1])
    with pytest.raises(E.PayloadTooLarge, match="max_request_size"):
        ts.predict("big", [1])
    with pytest.raises(E.ServerError):
        ts.predict("bad", [1])


def test_busy_answers_are_retried_with_the_bound(server):
    busy = {"left": 2}

    def app(seen):
        if busy["left"]:
            busy["left"] -= 1
            return Answer(503, {"code": 503, "type": "ServiceUnavailableException", "message": "busy"})
        return Answer(body={"ok": 1})

    server.app = app
    assert client(server, retries=2).predict("mlp", [1]) == {"ok": 1}
    assert len(server.seen) == 3
    busy["left"] = 5
    with pytest.raises(E.ServiceUnavailable):
        client(server, retries=1).predict("mlp", [1])


def test_no_server_is_one_clear_error():
    with TorchServe("http://127.0.0.1:9", "http://127.0.0.1:9", keys=StaticKeys(), retries=1, backoff=0) as ts:
        with pytest.raises(E.ServerUnreachable, match="no TorchServe answers at http://127.0.0.1:9"):
            ts.predict("mlp", [1])
        with pytest.raises(E.ServerUnreachable, match="no TorchServe answers"):
            ts.ping()


def test_a_slow_answer_is_a_timeout_and_the_connection_recovers(server):
    server.app = lambda seen: Answer(delay=1.0) if seen.path == "/predictions/slow" else Answer(body={"ok": 1})
    ts = client(server, retries=0)
    with pytest.raises(E.ServerUnreachable, match="got no answer within"):
        ts.predict("slow", [1], timeout=0.2)
    assert ts.predict("mlp", [1]) == {"ok": 1}


def test_a_connection_the_server_closed_is_replaced_without_an_error(server):
    server.app = lambda seen: Answer(body={"ok": 1}, close=True)  # closes after each answer, unannounced
    ts = client(server, retries=0)
    for _ in range(3):
        assert ts.predict("mlp", [1]) == {"ok": 1}
        time.sleep(0.05)
    server.app = lambda seen: Answer(body={"ok": 2}, headers={"Connection": "close"})
    assert ts.predict("mlp", [1]) == {"ok": 2}
    assert ts.predict("mlp", [1]) == {"ok": 2}
    assert len({s.port for s in server.seen}) == 5


def test_close_ends_the_connection_and_the_next_call_opens_one(server):
    ts = client(server)
    ts.predict("mlp", [1])
    ts.close()
    ts.predict("mlp", [1])
    assert len({s.port for s in server.seen}) == 2


# ---------------------------------------------------------------- what travels and what comes back


def test_headers_are_requests_defaults_plus_the_callers_without_duplicates(server):
    ts = client(server)
    ts.predict("mlp", b"\x00\x01", headers={"content-type": "application/x-thing", "X-Trace": "t1"})
    seen = server.seen[0]
    assert seen.headers.get_all("Content-Type") == ["application/x-thing"]
    assert seen.headers["X-Trace"] == "t1"
    assert seen.headers["User-Agent"] == requests.utils.default_user_agent()
    assert seen.headers["Accept"] == "*/*"
    assert seen.body == b"\x00\x01"
    ts.ping()
    assert server.seen[1].method == "GET" and "Content-Length" not in server.seen[1].headers


def test_answers_decode_as_before(server):
    answers = {
        "/predictions/text": Answer(body="héllo".encode(), headers={"Content-Type": "text/plain; charset=utf-8"}),
        "/predictions/bin": Answer(body=b"\x00\xff", headers={"Content-Type": "application/octet-stream"}),
        "/predictions/gz": Answer(body=gzip.compress(b'{"a": 1}'), headers={"Content-Encoding": "gzip"}),
        "/predictions/raw": Answer(body={"r": 1}, headers={"X-Request-Id": "abc"}),
    }
    server.app = lambda seen: answers[seen.path]
    ts = client(server)
    assert ts.predict("text", [1]) == "héllo"
    assert ts.predict("bin", [1]) == b"\x00\xff"
    assert ts.predict("gz", [1]) == {"a": 1}
    resp = ts.predict("raw", [1], raw=True)
    assert isinstance(resp, requests.Response)
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "abc" and resp.json() == {"r": 1}


def test_management_reads_and_query_calls_still_work(server):
    def app(seen):
        if seen.path.startswith("/models?"):
            return Answer(body={"models": [{"modelName": "mlp", "modelUrl": "mlp.mar"}]})
        if seen.path == "/models/mlp":
            return Answer(body=[{"modelName": "mlp", "modelVersion": "1.0", "minWorkers": 1, "workers": []}])
        return Answer(body={"status": "Healthy"})

    server.app = app
    ts = client(server)
    assert ts.ping() == "Healthy"
    assert [m.name for m in ts.list_models()] == ["mlp"]
    assert ts.describe("mlp")[0].version == "1.0"
    assert server.seen[1].path == "/models?limit=100"
    assert {s.headers["Authorization"] for s in server.seen[1:]} == {"Bearer MKEY"}


def test_predict_many_gives_each_thread_its_connection(server):
    server.app = lambda seen: Answer(body=json.loads(seen.body))
    ts = client(server)
    assert ts.predict_many("mlp", [[i] for i in range(20)], concurrency=4) == [[i] for i in range(20)]


def test_streams_still_arrive_in_chunks(server):
    server.app = lambda seen: Answer(body=b"one two", headers={"Content-Type": "text/plain"})
    assert "".join(client(server).stream("mlp", "hi")) == "one two"


# ---------------------------------------------------------------- where requests still carries the call


def test_a_proxy_from_the_environment_is_still_used(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", url(server))
    ts = TorchServe("http://model.invalid:1234", "http://model.invalid:1234", keys=StaticKeys())
    server.app = lambda seen: Answer(body={"via": seen.path})
    assert ts.predict("mlp", [1]) == {"via": "http://model.invalid:1234/predictions/mlp"}


def test_no_proxy_for_the_host_goes_direct(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing there: using it would fail
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert client(server, retries=0).predict("mlp", [1]) == {"ok": True}


def test_a_given_session_carries_every_call():
    transport = FakeTransport(lambda req: (200, {"ok": 1}))
    ts = TorchServe("http://i:8080", "http://i:8080", keys=StaticKeys("M", "I", "A"), session=session_with(transport))
    assert ts.predict("mlp", [1]) == {"ok": 1}
    assert transport.last().headers["Authorization"] == "Bearer I"


def test_a_kept_alive_connection_closed_as_a_request_goes_out_is_sent_once_more():
    """An nginx reload closes idle kept-alive connections: the request that meets the close got no byte of
    answer and goes once more on a new connection (even with retries=0); a new connection closed without an
    answer is the server's failure and is said."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[int] = []

    def serve() -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        for n in range(3):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                seen.append(n)
                if n == 0:  # answers the first request, then closes on the second without a byte
                    conn.sendall(answer)
                    conn.recv(65536)
                    seen.append(n)
                elif n == 1:
                    conn.sendall(answer)
                # n == 2: closed at once, on a new connection

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ts = TorchServe(
        management_url=f"http://127.0.0.1:{port}",
        inference_url=f"http://127.0.0.1:{port}",
        keys=StaticKeys(),
        retries=0,
    )
    assert ts.predict("m", {"x": 1}) == {}
    assert ts.predict("m", {"x": 2}) == {}  # met the close on the kept-alive connection: sent again
    assert seen == [0, 0, 1]
    with pytest.raises(E.ServerUnreachable, match="closed the connection without an answer"):
        TorchServe(
            management_url=f"http://127.0.0.1:{port}",
            inference_url=f"http://127.0.0.1:{port}",
            keys=StaticKeys(),
            retries=0,
        ).predict("m", {"x": 3})
    t.join(timeout=10)
    listener.close()
