import json

import pytest
import requests

from torchship import TorchServe
from torchship import errors as E
from torchship.sdk.auth import KeyFile, StaticKeys

from .fake_transport import FakeTransport, session_with


def make(responder, keys=None, **kw):
    transport = FakeTransport(responder)
    ts = TorchServe(
        "http://m:8081",
        "http://i:8080",
        "http://x:8082",
        keys=keys or StaticKeys("MKEY", "IKEY", "AKEY"),
        session=session_with(transport),
        backoff=0,
        **kw,
    )
    return ts, transport


def ok(body=None):
    return lambda req: (200, body if body is not None else {"status": "ok"})


def test_register_passes_only_the_file_name_and_query_parameters():
    ts, t = make(ok({"status": 'Model "mlp" Version: 1.0 registered with 1 initial workers'}))
    ts.register("/some/where/mlp-1.0.mar", model_name="mlp", initial_workers=2, batch_size=8, max_batch_delay=10)
    req = t.last()
    assert req.method == "POST" and t.path(req) == "/models"
    assert t.query(req) == {
        "url": "mlp-1.0.mar",
        "model_name": "mlp",
        "initial_workers": "2",
        "batch_size": "8",
        "max_batch_delay": "10",
        "synchronous": "true",
    }
    assert req.headers["Authorization"] == "Bearer MKEY"
    assert req.body is None


@pytest.mark.parametrize("bad", ["http://evil.example/x.mar", "file:///etc/passwd", "", ".hidden.mar"])
def test_register_refuses_urls_and_odd_names(bad):
    ts, t = make(ok())
    with pytest.raises(ValueError):
        ts.register(bad)
    assert t.requests == []


def test_scale_set_default_unregister_describe_paths():
    describe = [
        {
            "modelName": "mlp",
            "modelVersion": "2.0",
            "modelUrl": "mlp-2.0.mar",
            "minWorkers": 1,
            "maxWorkers": 2,
            "batchSize": 8,
            "maxBatchDelay": 10,
            "workers": [{"id": "9000", "status": "READY", "pid": 1}],
        }
    ]

    def responder(req):
        return 200, describe if req.method == "GET" else {"status": "done"}

    ts, t = make(responder)
    ts.scale("mlp", min_workers=1, max_workers=2, version="2.0")
    assert (t.last().method, t.path(t.last())) == ("PUT", "/models/mlp/2.0")
    assert t.query(t.last()) == {"min_worker": "1", "max_worker": "2", "synchronous": "true"}
    ts.scale("mlp", min_workers=3)
    assert t.query(t.last())["max_worker"] == "3"
    ts.set_default("mlp", "2.0")
    assert (t.last().method, t.path(t.last())) == ("PUT", "/models/mlp/2.0/set-default")
    ts.unregister("mlp", "1.0")
    assert (t.last().method, t.path(t.last())) == ("DELETE", "/models/mlp/1.0")
    [d] = ts.describe("mlp", "2.0")
    assert d.version == "2.0" and d.is_default and d.ready_workers == 1 and d.status == "READY"
    assert t.path(t.requests[-2]) == "/models/mlp/2.0" and t.path(t.last()) == "/models/mlp"


def test_model_names_are_not_paths():
    ts, t = make(ok())
    for bad in ("a/b", "..", ""):
        with pytest.raises(ValueError):
            ts.describe(bad)
    assert t.requests == []


from .test_names import BAD_NAMES, BAD_VERSIONS, short_id  # noqa: E402  (the rule's own cases)

# Every client method that names a model, called with a name (or version) from `bad`.
NAMED_CALLS = {
    "describe": lambda ts, n, v: ts.describe(n, v),
    "versions": lambda ts, n, v: ts.versions(n),
    "scale": lambda ts, n, v: ts.scale(n, min_workers=1, version=v),
    "set_default": lambda ts, n, v: ts.set_default(n, "1.0" if v is None else v),
    "unregister": lambda ts, n, v: ts.unregister(n, v),
    "predict": lambda ts, n, v: ts.predict(n, {"data": [1]}, version=v),
    "predict_many": lambda ts, n, v: ts.predict_many(n, [{"data": [1]}] * 3, version=v),
    "explain": lambda ts, n, v: ts.explain(n, {"data": [1]}, version=v),
    "stream": lambda ts, n, v: ts.stream(n, {"prompt": "x"}, version=v),  # refused on the call itself
    "wait_until_ready": lambda ts, n, v: ts.wait_until_ready(n, v, timeout=0.01, poll=0),
    "infer_v2": lambda ts, n, v: ts.infer_v2(n, {"x": [1.0]}),
    "register": lambda ts, n, v: ts.register("mlp-1.0.mar", model_name=n),
}


@pytest.mark.parametrize("call", sorted(NAMED_CALLS))
@pytest.mark.parametrize("bad", BAD_NAMES + [None, 7, b"mlp"], ids=short_id)
def test_bad_model_names_are_refused_before_any_request(call, bad):
    if call == "register" and bad is None:
        pytest.skip("register without model_name: TorchServe takes the name in the archive's manifest")
    ts, t = make(ok())
    with pytest.raises(ValueError, match="invalid model name"):
        NAMED_CALLS[call](ts, bad, None)
    assert t.requests == []


@pytest.mark.parametrize("call", sorted(set(NAMED_CALLS) - {"versions", "infer_v2", "register"}))
@pytest.mark.parametrize("bad", BAD_VERSIONS + [2], ids=short_id)
def test_bad_versions_are_refused_before_any_request(call, bad):
    ts, t = make(ok())
    if (call, bad) == ("describe", "all"):  # describe's own word for every version
        ts.describe("mlp", "all")
        assert t.path(t.requests[0]) == "/models/mlp/all"
        return
    with pytest.raises(ValueError, match="invalid version"):
        NAMED_CALLS[call](ts, "mlp", bad)
    assert t.requests == []


def test_register_refuses_a_model_name_that_could_never_be_unregistered():
    """TorchServe 0.12 accepts `model_name=../x` (or a name with a newline) and then no HTTP path can
    name it again: the client refuses it, and sends nothing."""
    ts, t = make(ok())
    for bad in ("../x", "a/b", "x\ny", "x\n", "..", "x y"):
        with pytest.raises(ValueError, match="invalid model name"):
            ts.register("probemm-1.0.mar", model_name=bad)
    assert t.requests == []
    ts.register("probemm-1.0.mar", model_name="probemm")  # a good one still goes, as a query parameter
    assert t.query(t.last())["model_name"] == "probemm"


@pytest.mark.parametrize(
    "bad", ["mlp\n-1.0.mar", "mlp-1.0.mar\x00", "mlp-1.0\r.mar", "\u202emlp-1.0.mar"], ids=short_id
)
def test_register_refuses_archive_file_names_with_control_characters(bad):
    ts, t = make(ok())
    with pytest.raises(ValueError, match="not an archive file name of the model store"):
        ts.register(bad)
    assert t.requests == []


def test_register_takes_the_archive_of_any_valid_name_and_version():
    """`<name>-<version>.mar` can be longer than a name may be: the archive is not held to the name's length."""
    ts, t = make(ok())
    name, version = "n" * 128, "1" * 64
    ts.register(f"/store/{name}-{version}.mar", model_name=name)
    assert t.query(t.last()) == {
        "url": f"{name}-{version}.mar",
        "model_name": name,
        "initial_workers": "1",
        "synchronous": "true",
    }


def test_valid_names_and_versions_travel_unescaped():
    ts, t = make(ok())
    ts.predict("two-tower_v2.b", {"data": [1]}, version="2.1-rc1")
    assert t.path(t.last()) == "/predictions/two-tower_v2.b/2.1-rc1"
    with pytest.raises(ValueError, match="invalid version None"):
        ts.set_default("m", None)  # would be PUT /models/m/set-default: a version named "set-default"
    assert t.path(t.last()) == "/predictions/two-tower_v2.b/2.1-rc1"
    ts.describe("m", "all")  # "all": every version (a TorchServe keyword that passes the rule)
    assert t.path(t.requests[-2]) == "/models/m/all"


def test_list_models_follows_every_page():
    pages = {
        None: {"models": [{"modelName": "a", "modelUrl": "a.mar"}], "nextPageToken": "1"},
        "1": {"models": [{"modelName": "b", "modelUrl": "b.mar"}], "nextPageToken": "2"},
        "2": {"models": [{"modelName": "c", "modelUrl": "c.mar"}]},
    }
    ts, t = make(lambda req: (200, pages[FakeTransport.query(req).get("next_page_token")]))
    assert [m.name for m in ts.list_models(page_size=1)] == ["a", "b", "c"]
    assert [FakeTransport.query(r)["limit"] for r in t.requests] == ["1", "1", "1"]


def test_predict_sends_compact_json_with_the_inference_key_and_decodes_json():
    ts, t = make(ok({"class_id": 3}))
    assert ts.predict("mlp", {"data": [1, 2]}, version="1.0") == {"class_id": 3}
    req = t.last()
    assert t.path(req) == "/predictions/mlp/1.0"
    assert req.body == b'{"data":[1,2]}'
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Authorization"] == "Bearer IKEY"


def test_predict_sends_bytes_and_files_raw(tmp_path):
    ts, t = make(ok({}))
    ts.predict("img", b"\x89PNG")
    assert t.last().body == b"\x89PNG" and t.last().headers["Content-Type"] == "application/octet-stream"
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    from pathlib import Path

    ts.predict("img", Path(f))
    assert t.last().body == b"abc"


def test_predict_refuses_nan_before_sending():
    ts, t = make(ok())
    with pytest.raises(ValueError):
        ts.predict("mlp", {"data": [float("nan")]})
    assert t.requests == []


def test_safe_calls_retry_503_and_connection_errors_with_a_bound():
    answers = iter(
        [
            (503, {"code": 503, "type": "ServiceUnavailableException", "message": "busy"}),
            (0, requests.exceptions.ConnectionError("refused")),
            (200, {"ok": 1}),
        ]
    )
    ts, t = make(lambda req: next(answers))
    assert ts.predict("mlp", {"data": []}) == {"ok": 1}
    assert len(t.requests) == 3

    ts, t = make(lambda req: (503, {"code": 503, "type": "ServiceUnavailableException", "message": "busy"}), retries=2)
    with pytest.raises(E.ServiceUnavailable):
        ts.predict("mlp", {})
    assert len(t.requests) == 3  # first try + 2 retries


def test_worker_died_is_retried_for_predictions_only():
    died = (500, {"code": 500, "type": "InternalServerException", "message": "Worker died."})
    answers = iter([died, (200, {"ok": 1})])
    ts, t = make(lambda req: next(answers))
    assert ts.predict("mlp", {}) == {"ok": 1}

    ts, t = make(lambda req: died)
    with pytest.raises(E.WorkerDied):
        ts.register("mlp-1.0.mar")
    assert len(t.requests) == 1


def test_register_and_unregister_are_never_retried():
    ts, t = make(lambda req: (503, {"code": 503, "type": "ServiceUnavailableException", "message": "busy"}))
    with pytest.raises(E.ServiceUnavailable):
        ts.register("mlp-1.0.mar")
    with pytest.raises(E.ServiceUnavailable):
        ts.unregister("mlp")
    assert len(t.requests) == 2


def test_unreachable_server_is_one_clear_error():
    ts, t = make(lambda req: (0, requests.exceptions.ConnectionError("refused")), retries=1)
    with pytest.raises(E.ServerUnreachable, match="no TorchServe answers at http://i:8080"):
        ts.ping()


def write_keys(path, m, i, a="AKEY"):
    path.write_text(
        json.dumps(
            {
                "management": {"key": m, "expiration time": "x"},
                "inference": {"key": i, "expiration time": "x"},
                "API": {"key": a},
            }
        )
    )


INVALID = (400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."})


def test_stale_key_is_re_read_from_the_key_file_and_retried_once(tmp_path):
    kf = tmp_path / "key_file.json"
    write_keys(kf, "M1", "I1")

    def responder(req):
        return (200, {"status": "Healthy"}) if req.headers["Authorization"] == "Bearer I2" else INVALID

    ts, t = make(responder, keys=KeyFile(kf))
    ts.keys.key("inference")  # loaded: I1
    write_keys(kf, "M2", "I2")  # the server restarted and wrote new keys
    assert ts.ping() == "Healthy"
    assert [r.headers["Authorization"] for r in t.requests] == ["Bearer I1", "Bearer I2"]


def test_expired_key_is_rotated_with_the_api_key(tmp_path):
    kf = tmp_path / "key_file.json"
    write_keys(kf, "M1", "I1")

    def responder(req):
        if FakeTransport.path(req) == "/token":
            assert req.headers["Authorization"] == "Bearer AKEY"
            assert FakeTransport.query(req) == {"type": "inference"}
            write_keys(kf, "M1", "I2")  # TorchServe answers 200 with an empty body and rewrites the file
            return 200, b""
        return (200, {"status": "Healthy"}) if req.headers["Authorization"] == "Bearer I2" else INVALID

    ts, t = make(responder, keys=KeyFile(kf))
    assert ts.ping() == "Healthy"
    assert [t.path(r) for r in t.requests] == ["/ping", "/token", "/ping"]


def test_a_wrong_key_fails_after_one_refresh(tmp_path):
    kf = tmp_path / "key_file.json"
    write_keys(kf, "M1", "I1")
    ts, t = make(lambda req: (200, b"") if t.path(req) == "/token" else INVALID, keys=KeyFile(kf))
    with pytest.raises(E.Unauthorized):
        ts.ping()
    assert [t.path(r) for r in t.requests] == ["/ping", "/token", "/ping"]


def test_keys_never_show_in_repr_or_errors(tmp_path):
    kf = tmp_path / "key_file.json"
    write_keys(kf, "SECRETM", "SECRETI", "SECRETA")
    ts, t = make(lambda req: INVALID if t.path(req) != "/token" else (200, b""), keys=KeyFile(kf))
    with pytest.raises(E.Unauthorized) as info:
        ts.ping()
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(ts) and "SECRET" not in repr(ts.keys)


def test_missing_key_file_says_how_to_fix(tmp_path):
    ts, t = make(ok(), keys=KeyFile(tmp_path / "nope.json"))
    with pytest.raises(E.ConfigError, match="Is the server running"):
        ts.ping()


def test_from_config_finds_addresses_and_key_file(tmp_path):
    (tmp_path / "config.properties").write_text(
        "inference_address=http://127.0.0.1:1\nmanagement_address=http://127.0.0.1:2\n"
    )
    ts = TorchServe.from_config(tmp_path / "config.properties")
    assert ts.urls["inference"] == "http://127.0.0.1:1" and ts.urls["management"] == "http://127.0.0.1:2"
    assert ts.keys.path == tmp_path.resolve() / ".torchship" / "server" / "key_file.json"
    write_keys(tmp_path / "key_file.json", "m", "i")
    assert TorchServe.from_config(tmp_path / "config.properties").keys.path == tmp_path.resolve() / "key_file.json"


def test_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TS_MANAGEMENT_URL", "http://127.0.0.1:5")
    monkeypatch.setenv("TS_INFERENCE_URL", "http://127.0.0.1:6")
    monkeypatch.setenv("TS_KEY_FILE", str(tmp_path / "k.json"))
    ts = TorchServe.from_env()
    assert ts.urls["management"] == "http://127.0.0.1:5" and ts.urls["inference"] == "http://127.0.0.1:6"
    assert ts.keys.path == tmp_path / "k.json"


def test_predict_many_keeps_order_and_per_item_errors():
    def responder(req):
        body = json.loads(req.body)
        if body["i"] == 2:
            return 400, {"code": 400, "type": "BadRequest", "message": "bad item"}
        return 200, {"i": body["i"]}

    ts, t = make(responder)
    out = ts.predict_many("mlp", [{"i": i} for i in range(5)], concurrency=1)
    assert [o if isinstance(o, dict) else type(o) for o in out] == [
        {"i": 0},
        {"i": 1},
        E.BadRequest,
        {"i": 3},
        {"i": 4},
    ]


def test_explain_infer_v2_and_metrics_endpoints():
    import numpy as np

    def responder(req):
        path = FakeTransport.path(req)
        if path.startswith("/v2/"):
            return 200, {
                "model_name": "mlp",
                "id": "r",
                "outputs": [
                    {"name": "class_id", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                    {"name": "p", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.9, 0.2, 0.8]},
                ],
            }
        if path == "/metrics":
            return 200, b'ts_inference_requests_total{model_name="mlp",model_version="default",} 4.0\n'
        return 200, {"attributions": [0.5]}

    ts, t = make(responder)
    assert ts.explain("mlp", {"data": [1]}, version="2.0") == {"attributions": [0.5]}
    assert (t.last().method, t.path(t.last())) == ("POST", "/explanations/mlp/2.0")

    answer = ts.infer_v2("mlp", {"input-0": np.zeros((2, 3), dtype=np.float32)}, outputs=["p"], request_id="r")
    req = t.last()
    assert t.path(req) == "/v2/models/mlp/infer" and req.headers["Authorization"] == "Bearer IKEY"
    assert json.loads(req.body) == {
        "inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP32", "data": [0.0] * 6}],
        "id": "r",
        "outputs": [{"name": "p"}],
    }
    assert answer["outputs"][0]["data"].dtype == np.int64
    assert answer["outputs"][1]["data"].shape == (2, 2)

    assert ts.metrics().requests("mlp") == 4.0
    assert t.path(t.last()) == "/metrics" and "Authorization" not in t.last().headers


def test_stream_yields_chunks():
    ts, t = make(lambda req: (200, b"tick 0\ntick 1\n"))
    assert "".join(ts.stream("countdown", {"count": 2})) == "tick 0\ntick 1\n"
    assert b"".join(ts.stream("countdown", {"count": 2}, raw=True)) == b"tick 0\ntick 1\n"
    assert t.path(t.last()) == "/predictions/countdown"


def test_wait_until_ready_polls_until_workers_are_up():
    states = iter(["STARTING", "STARTING", "READY"])

    def responder(req):
        return 200, [
            {
                "modelName": "m",
                "modelVersion": "1",
                "minWorkers": 1,
                "maxWorkers": 1,
                "workers": [{"id": "9000", "status": next(states)}],
            }
        ]

    ts, t = make(responder)
    assert ts.wait_until_ready("m", timeout=5, poll=0).ready_workers == 1
    assert len(t.requests) == 3


def test_public_surface():
    import torchship
    from torchship import errors

    assert set(torchship.__all__) == {
        "Project",
        "History",
        "TuneResult",
        "TorchServe",
        "LocalServer",
        "TorchServeError",
        "errors",
        "__version__",
    }
    for name in errors.__all__:
        assert hasattr(errors, name)
    api = {
        "register",
        "unregister",
        "scale",
        "describe",
        "versions",
        "list_models",
        "set_default",
        "wait_until_ready",
        "ping",
        "is_healthy",
        "predict",
        "predict_many",
        "stream",
        "explain",
        "infer_v2",
        "metrics",
        "metrics_text",
        "from_config",
        "from_env",
        "close",
    }
    assert api <= {n for n in dir(TorchServe) if not n.startswith("_")}


def test_numpy_arrays_travel_as_npy():
    import numpy as np

    ts, t = make(ok({}))
    ts.predict("mlp", np.zeros((2, 100), dtype=np.float32))
    assert t.last().headers["Content-Type"] == "application/x-npy" and t.last().body.startswith(b"\x93NUMPY")


def test_a_body_over_the_servers_limit_is_refused_before_sending():
    ts, t = make(ok(), max_request_size=100)
    with pytest.raises(E.PayloadTooLarge, match=r"\(101 bytes\) is over the server's max_request_size \(100 bytes\)"):
        ts.predict("mlp", b"x" * 101)
    assert t.requests == []
    ts.predict("mlp", b"x" * 100)
    assert len(t.requests) == 1


def test_the_frontends_empty_413_is_explained():
    ts, t = make(lambda req: (413, b""))
    with pytest.raises(E.PayloadTooLarge) as caught:
        ts.predict("mlp", b"x" * 2048)
    assert "the request body (2,048 bytes) is over the server's max_request_size" in str(caught.value)
    assert "compress" in str(caught.value) and str(caught.value).count("max_request_size") == 2  # no second hint


def test_from_config_knows_the_servers_limit(tmp_path):
    (tmp_path / "config.properties").write_text("max_request_size=1234\n")
    assert TorchServe.from_config(tmp_path / "config.properties").max_request_size == 1234
    (tmp_path / "config.properties").write_text("model_store=x\n")
    assert TorchServe.from_config(tmp_path / "config.properties").max_request_size == 6_553_500
