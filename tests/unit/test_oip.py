"""The Open Inference Protocol codec and the mlp handler's v2 and explanation paths."""

import json

import numpy as np
import pytest
import torchship_oip as oip
from ts.context import RequestProcessor

from tests.conftest import load_handler
from tests.helpers import rows

from .handler_context import make_context, statuses


def test_decode_json_and_binary_tensors():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    req = {
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": x.reshape(-1).tolist()},
            {"name": "b", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
        ]
    }
    head = json.dumps(req).encode()
    body = head + np.array([7, 8], dtype=np.int64).tobytes()
    parsed, binary = oip.split_body(body, len(head))
    tensors = oip.decode_inputs(parsed, binary)
    assert np.array_equal(tensors["a"], x) and tensors["a"].dtype == np.float32
    assert tensors["b"].tolist() == [7, 8]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}, "do not fill shape"),
        ({"name": "a", "shape": [2], "datatype": "FP99", "data": [1, 2]}, "datatype among"),
        ({"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}, "non-negative"),
        ({"name": "a", "shape": [2], "datatype": "FP32", "data": ["x", "y"]}, "not FP32 values"),
        ({"name": "a", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 99}}, "binary_data_size"),
        ({"name": "a", "shape": [1], "datatype": "BYTES", "data": ["x"]}, "BYTES"),
        ("not an object", "must be an object"),
    ],
)
def test_protocol_errors(spec, message):
    with pytest.raises(oip.ProtocolError, match=message):
        oip.decode_inputs({"inputs": [spec]})


def test_binary_response_round_trips():
    outs = [("c", np.array([1, 2], dtype=np.int64)), ("p", np.ones((2, 2), dtype=np.float32))]
    body, n = oip.encode_response("m", "1", "id", outs, {"parameters": {"binary_data_output": True}}, binary=True)
    head = json.loads(body[:n])
    assert [o["parameters"]["binary_data_size"] for o in head["outputs"]] == [16, 16]
    assert np.frombuffer(body[n : n + 16], dtype=np.int64).tolist() == [1, 2]
    with pytest.raises(oip.ProtocolError, match="unknown output"):
        oip.encode_response("m", "1", "id", outs, {"outputs": [{"name": "zzz"}]}, binary=False)


@pytest.fixture(scope="module")
def handler(mlp_run, tmp_path_factory):
    return load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)


def test_v2_and_classic_requests_in_one_batch(handler):
    x = np.asarray(rows(2, seed=9), dtype=np.float32)
    v2 = {
        "id": "r1",
        "inputs": [{"name": "input-0", "shape": [2, 100], "datatype": "FP32", "data": x.reshape(-1).tolist()}],
    }
    bad_v2 = {"inputs": [{"name": "input-0", "shape": [2, 50], "datatype": "FP32", "data": [0.0] * 100}]}
    ctx = make_context(handler.model_dir, batch=3)
    results = handler.handle([{"body": v2}, {"body": {"data": x.tolist()}}, {"body": bad_v2}], ctx)
    assert statuses(ctx, 3) == [200, 200, 400]
    answer = json.loads(results[0])
    assert answer["id"] == "r1" and answer["model_name"] == "t"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["class_id"]["data"] == [a["class_id"] for a in json.loads(results[1])]
    assert outputs["probabilities"]["shape"] == [2, 10]
    error = json.loads(results[2])
    assert error["error"] == error["message"] and "shape [2, 50]" in error["message"]


def test_v2_binary_request_gets_a_binary_answer(handler):
    x = np.asarray(rows(1, seed=2), dtype=np.float32)
    head = json.dumps(
        {
            "inputs": [{"name": "i", "shape": [1, 100], "datatype": "FP32", "parameters": {"binary_data_size": 400}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    ctx = make_context(handler.model_dir, batch=1)
    ctx.request_processor = [RequestProcessor({"Inference-Header-Content-Length": str(len(head))})]
    [result] = handler.handle([{"body": head + x.tobytes()}], ctx)
    n = int(ctx.get_response_headers(0)["Inference-Header-Content-Length"])
    meta = json.loads(result[:n])
    assert [o["name"] for o in meta["outputs"]] == ["class_id", "probabilities"]
    assert len(result) == n + 8 + 40


def test_explanations(handler):
    ctx = make_context(handler.model_dir, batch=2)
    ctx.request_processor = [RequestProcessor({"explain": "True"}) for _ in range(2)]
    results = handler.handle([{"body": {"data": rows(1)[0]}}, {"body": {"data": [1]}}], ctx)
    assert statuses(ctx, 2) == [200, 400]
    assert len(json.loads(results[0])["attributions"]) == 100
