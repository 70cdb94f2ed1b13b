"""The whole mlp flow on a real TorchServe: trained checkpoint -> archive -> deploy -> predictions."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch

from tests.helpers import assert_same_answers, rows
from torchship import errors as E
from torchship.ops.deploy import deploy

pytestmark = pytest.mark.integration


def test_deploy_registers_with_batching_and_a_ready_worker(client, mlp_deployed):
    d = mlp_deployed.description
    assert mlp_deployed.action == "registered"
    assert (d.name, d.version, d.is_default) == ("mlp", "1.0", True)
    assert d.ready_workers == 1 and d.batch_size == 8 and d.max_batch_delay == 1
    assert [m.name for m in client.list_models()] == ["mlp"]


def test_predictions_equal_the_trained_model(client, mlp_deployed, mlp_reference):
    data = rows(20, seed=1)
    answers = [client.predict("mlp", {"data": r}) for r in data]
    with torch.inference_mode():
        expected = torch.softmax(mlp_reference(torch.tensor(data, dtype=torch.float32)), 1)
    assert [a["class_id"] for a in answers] == expected.argmax(1).tolist()
    assert np.allclose([a["probabilities"] for a in answers], expected.numpy(), atol=1e-5)
    # the version route answers the same
    assert client.predict("mlp", {"data": data[0]}, version="1.0") == answers[0]


def test_a_concurrent_batch_with_one_bad_item(server, client, store, mlp_archive, mlp_run):
    """Four requests that the server batches together: the bad one gets 400, the rest 200."""
    # A second version with a long batch delay so the four requests land in one batch.
    import shutil

    shutil.copy(mlp_archive, store / "mlp-batch.mar")
    client.register("mlp-batch.mar", model_name="mlp-batch", initial_workers=1, batch_size=4, max_batch_delay=2000)
    try:
        url = server.config().inference_url + "/predictions/mlp-batch"
        headers = {
            "Authorization": "Bearer " + json.loads(server.key_file.read_text())["inference"]["key"],
            "Content-Type": "application/json",
        }
        good = rows(3, seed=7)
        bodies = [
            json.dumps({"data": good[0]}),
            json.dumps({"data": good[1]}),
            '{"data": [1, 2]}',
            json.dumps({"data": good[2]}),
        ]
        with ThreadPoolExecutor(4) as pool:
            resps = list(pool.map(lambda b: requests.post(url, data=b, headers=headers, timeout=30), bodies))
        assert [r.status_code for r in resps] == [200, 200, 400, 200]
        assert "100 numbers" in resps[2].json()["message"]
        singles = [client.predict("mlp", {"data": g}) for g in good]
        assert_same_answers([resps[i].json() for i in (0, 1, 3)], singles)
        with pytest.raises(E.BadRequest, match="shape"):
            client.predict("mlp-batch", {"data": [1, 2]})
    finally:
        client.unregister("mlp-batch")


def test_bad_requests_are_4xx_and_the_server_stays_healthy(client, mlp_deployed):
    for bad in ({"data": "x"}, {"nope": 1}, b"\x00\x01binary", {"data": [[0.0] * 100] * 2000}):
        with pytest.raises(E.BadRequest):
            client.predict("mlp", bad)
    with pytest.raises(E.ModelNotFound):
        client.predict("no-such-model", {"data": [0.0] * 100})
    assert client.ping() == "Healthy"


def test_deploy_twice_is_harmless(client, store, mlp_deployed, public_key):
    again = deploy(client, store, "mlp", "1.0", workers=1, public_key=public_key)
    assert again.action == "already registered"
    assert again.description.ready_workers == 1
    assert len(client.versions("mlp")) == 1


def test_register_refuses_an_archive_outside_the_store(client, mlp_deployed):
    with pytest.raises(E.ModelNotFound):
        client.register("does-not-exist.mar")
    with pytest.raises(ValueError):
        client.register("file:///etc/passwd")


def test_binary_npy_request_answers_like_json(client, mlp_deployed):
    data = np.asarray(rows(4, seed=11), dtype=np.float32)
    assert_same_answers(client.predict("mlp", data), client.predict("mlp", {"data": data.tolist()}))
