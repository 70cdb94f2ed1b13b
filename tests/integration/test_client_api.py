"""Every client method against a real TorchServe with token auth on."""

import json
import time

import numpy as np
import pytest
import requests

from tests.helpers import assert_same_answers, rows
from torchship import TorchServe, archiver
from torchship import errors as E
from torchship.archiver import ArchiveSpec

from .conftest import ROOT, start_server

pytestmark = pytest.mark.integration


def test_describe_is_typed_with_workers(client, mlp_deployed):
    [d] = client.describe("mlp")
    assert d.name == "mlp" and d.version == "1.0" and d.is_default
    assert d.workers and d.workers[0].status == "READY" and d.workers[0].pid > 0
    assert d.batch_size == 8 and d.max_batch_delay == 1 and d.url == "mlp-1.0.mar"


def build_two_versions(store, mlp_run, name: str) -> None:
    """mlp's archives 1.0 and 2.0 under another name, into the store."""
    for v in ("1.0", "2.0"):
        spec = archiver.example_spec("mlp", mlp_run, v)
        spec = ArchiveSpec(
            name, v, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
        )
        archiver.build(spec, store)


def test_versions_set_default_and_unregister_rules(client, store, mlp_run):
    name = "mlpv"
    build_two_versions(store, mlp_run, name)
    try:
        client.register(f"{name}-1.0.mar", initial_workers=1)
        client.register(f"{name}-2.0.mar", initial_workers=1)
        with pytest.raises(E.ModelAlreadyExists):
            client.register(f"{name}-2.0.mar", initial_workers=1)
        versions = {d.version: d.is_default for d in client.versions(name)}
        assert versions == {"1.0": True, "2.0": False}

        client.set_default(name, "2.0")
        assert {d.version: d.is_default for d in client.versions(name)} == {"1.0": False, "2.0": True}
        assert client.describe(name)[0].version == "2.0"
        with pytest.raises(E.ModelNotFound):
            client.set_default(name, "9.9")

        with pytest.raises(E.Forbidden, match="set-default"):
            client.unregister(name, "2.0")  # the default, while 1.0 exists
        client.unregister(name, "1.0")
        assert [d.version for d in client.versions(name)] == ["2.0"]
        x = rows(1)[0]
        assert client.predict(name, {"data": x}) == client.predict(name, {"data": x}, version="2.0")
    finally:
        for v in ("1.0", "2.0"):
            try:
                client.unregister(name, v)
            except E.TorchServeError:
                pass
    with pytest.raises(E.ModelNotFound):
        client.describe(name)


def test_a_version_taken_down_right_after_load_leaves_its_name_usable(client, store, mlp_run):
    """TorchServe 0.12 can fail a DELETE that meets workers finishing their last batches (500, having
    dropped the version but not the name, which then refuses registrations). Every unregister of
    torchship (`torchship unregister`, apply, a failed rollout) goes through take_down: workers to zero
    first, then the DELETE. Three times: heavy load on 2.0, then at once take it down and register it
    again; 1.0, the default, serves throughout."""
    from torchship.ops.takedown import take_down
    from torchship.perf import wrk
    from torchship.perf.bench import wrk_load

    if not wrk.available():
        pytest.skip("wrk is not installed (scripts/setup-os.sh wrk)")
    name = "mlptd"
    build_two_versions(store, mlp_run, name)
    x = {"data": rows(1)[0]}
    try:
        client.register(f"{name}-1.0.mar", initial_workers=1, batch_size=8, max_batch_delay=1)
        for _ in range(3):
            client.register(f"{name}-2.0.mar", initial_workers=1, batch_size=8, max_batch_delay=1)
            client.wait_until_ready(name, "2.0", timeout=120)
            load = wrk_load(client, name, x, version="2.0", concurrency=16, seconds=1.5)
            assert load["sent"] > 100 and not load["failed"], load
            take_down(client, name, "2.0")
            assert [d.version for d in client.versions(name)] == ["1.0"]
            assert client.predict(name, x)["class_id"] == client.predict(name, x, version="1.0")["class_id"]
        # the only version, right after load: the name goes too, and can be registered again
        wrk_load(client, name, x, version=None, concurrency=16, seconds=1.5)
        take_down(client, name)
        with pytest.raises(E.ModelNotFound):
            client.describe(name)
        client.register(f"{name}-1.0.mar", initial_workers=1)
        assert client.versions(name)[0].version == "1.0"
    finally:
        for v in ("2.0", "1.0"):
            try:
                take_down(client, name, v)
            except E.TorchServeError:
                pass


def test_scale_up_and_down(client, mlp_deployed):
    client.scale("mlp", min_workers=2, max_workers=2)
    d = client.wait_until_ready("mlp", timeout=60)
    assert d.min_workers == 2 and d.ready_workers == 2
    client.scale("mlp", min_workers=1, max_workers=1)
    assert client.describe("mlp")[0].ready_workers == 1


def test_list_models_follows_pages(client, store, mlp_archive, mlp_deployed):
    names = [f"page{i}" for i in range(5)]
    for n in names:
        client.register(mlp_archive.name, model_name=n, initial_workers=0)
    try:
        listed = [m.name for m in client.list_models(page_size=2)]
        assert set(names) | {"mlp"} <= set(listed)
        assert len(listed) == len(set(listed))  # no model twice across pages
    finally:
        for n in names:
            client.unregister(n)


def test_wait_until_ready_times_out_clearly(client, mlp_archive, mlp_deployed):
    client.register(mlp_archive.name, model_name="idle", initial_workers=0)
    try:
        with pytest.raises(E.ReadinessTimeout, match="idle not ready after 1 s"):
            client.wait_until_ready("idle", timeout=1)
    finally:
        client.unregister("idle")


def test_predict_many_in_order_with_per_item_errors(client, mlp_deployed):
    good = rows(6, seed=3)
    items = [{"data": good[0]}, {"data": "bad"}, {"data": good[1]}, {"nope": 1}, {"data": good[2]}] * 4
    out = client.predict_many("mlp", items, concurrency=8)
    assert len(out) == 20
    for i, result in enumerate(out):
        if i % 5 in (1, 3):
            assert isinstance(result, E.BadRequest)
        else:
            assert isinstance(result, dict) and "class_id" in result
    singles = [client.predict("mlp", {"data": g}) for g in good[:3]]
    assert_same_answers([out[0], out[2], out[4]], singles)


def test_compressed_requests_get_the_same_answers(server, client, mlp_deployed):
    """compress_min_bytes: bodies over the threshold go gzipped through the real frontend."""
    packing = TorchServe.from_config(server.effective_config_path, compress_min_bytes=200)
    body, headers = packing.encode_body({"data": rows(1)[0]})
    assert headers["Content-Encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    assert packing.encode_body({"data": [1]})[1].get("Content-Encoding") is None  # small bodies go as they are
    batch = np.asarray(rows(16, seed=8), dtype=np.float32)
    single = {"data": rows(1)[0]}
    assert_same_answers([packing.predict("mlp", single)], [client.predict("mlp", single)])
    assert_same_answers(packing.predict("mlp", batch), client.predict("mlp", batch))
    with pytest.raises(E.BadRequest, match="gzip body is truncated"):
        client.predict("mlp", body[:-9])


def test_explain(client, mlp_deployed, mlp_reference):
    import torch

    x = rows(1, seed=4)[0]
    e = client.explain("mlp", {"data": x})
    assert len(e["attributions"]) == 100
    t = torch.tensor([x], requires_grad=True)
    logits = mlp_reference(t)
    logits[0, logits.argmax()].backward()
    assert e["class_id"] == int(logits.argmax())
    assert np.allclose(e["attributions"], (t.grad * t)[0].detach().numpy(), atol=1e-4)


def test_open_inference_protocol_v2(client, server, mlp_deployed):
    x = np.asarray(rows(3, seed=5), dtype=np.float32)
    answer = client.infer_v2("mlp", {"input-0": x}, request_id="req-1")
    assert answer["model_name"] == "mlp" and answer["id"] == "req-1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["datatype"] == "FP32" and outputs["probabilities"]["data"].shape == (3, 10)
    classic = client.predict("mlp", {"data": x.tolist()})
    assert outputs["class_id"]["data"].tolist() == [a["class_id"] for a in classic]
    only = client.infer_v2("mlp", {"x": x[0]}, outputs=["class_id"])
    assert [o["name"] for o in only["outputs"]] == ["class_id"]
    with pytest.raises(E.BadRequest, match="shape"):
        client.infer_v2("mlp", {"x": x[:, :50]})


def test_a_standard_v2_client_works(server, mlp_deployed, client):
    """tritonclient, with its defaults (binary tensor extension) and with JSON tensors."""
    th = pytest.importorskip("tritonclient.http")
    key = json.loads(server.key_file.read_text())["inference"]["key"]
    c = th.InferenceServerClient(server.config().inference_url.split("://")[1])
    x = np.asarray(rows(2, seed=6), dtype=np.float32)
    expected = [a["class_id"] for a in client.predict("mlp", {"data": x.tolist()})]
    for binary in (True, False):
        inp = th.InferInput("input-0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        res = c.infer("mlp", [inp], headers={"Authorization": "Bearer " + key})
        assert res.as_numpy("class_id").tolist() == expected
        assert res.as_numpy("probabilities").shape == (2, 10)
    bad = th.InferInput("input-0", [2, 99], "FP32")
    bad.set_data_from_numpy(x[:, :99], binary_data=False)
    with pytest.raises(Exception, match="400"):
        c.infer("mlp", [bad], headers={"Authorization": "Bearer " + key})


def test_streaming_chunks_arrive_as_generated(client, store):
    spec = ArchiveSpec("countdown", "1.0", ROOT / "tests" / "fixtures" / "countdown_stream_handler.py")
    archiver.build(spec, store, force=True)
    client.register("countdown-1.0.mar", initial_workers=1)
    try:
        start, arrivals, chunks = time.monotonic(), [], []
        for chunk in client.stream("countdown", {"count": 5, "delay": 0.3}):
            arrivals.append(time.monotonic() - start)
            chunks.append(chunk)
        assert "".join(chunks) == "".join(f"tick {i}\n" for i in range(5))
        assert len(chunks) >= 4
        assert arrivals[-1] - arrivals[0] >= 0.9  # the first came well before the last
    finally:
        client.unregister("countdown")


def test_metrics_count_requests_per_model(client, mlp_deployed):
    before = client.metrics().requests("mlp")
    for x in rows(3, seed=8):
        client.predict("mlp", {"data": x})
    m = client.metrics()
    assert m.requests("mlp") == before + 3
    assert m.mean_latency_ms("mlp") > 0


def test_unreachable_and_model_api_disabled(tmp_path, store, mlp_archive):
    dead = TorchServe("http://127.0.0.1:9", "http://127.0.0.1:9", retries=1, backoff=0)
    with pytest.raises(E.ServerUnreachable):
        dead.ping()
    server = start_server(tmp_path / "noapi", store, enable_model_api="false")
    try:
        with server.client() as c:
            with pytest.raises(E.ModelAPIDisabled, match="enable_model_api=true"):
                c.register(mlp_archive.name)
    finally:
        server.stop()


def test_token_expiry_is_survived_without_the_caller_noticing(tmp_path, store, mlp_archive):
    """Keys that expire after 3 s: the client rotates them with the API key and retries once."""
    server = start_server(tmp_path / "short", store, token_expiration_min="0.05")
    try:
        with server.client() as c:
            c.register(mlp_archive.name, initial_workers=1)
            x = {"data": rows(1)[0]}
            first = c.predict("mlp", x)
            old_key = json.loads(server.key_file.read_text())["inference"]["key"]
            time.sleep(4)
            raw = requests.get(server.config().inference_url + "/ping", headers={"Authorization": f"Bearer {old_key}"})
            assert raw.status_code == 400  # the old key really expired
            assert c.predict("mlp", x) == first
            assert c.describe("mlp")[0].ready_workers == 1  # the management key too
            assert json.loads(server.key_file.read_text())["inference"]["key"] != old_key
    finally:
        server.stop()
