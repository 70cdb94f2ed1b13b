"""The mlp handler with a hand-built context: batching, per-item errors, answers equal to the model's."""

import json
import math
import shutil

import mlp_handler
import numpy as np
import pytest
import torch

from tests.conftest import load_handler
from tests.helpers import assert_same_answers, rows

from .handler_context import decoded, make_context, statuses


@pytest.fixture(scope="module")
def handler(mlp_run, tmp_path_factory):
    return load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)


def run(handler, bodies):
    ctx = make_context(handler.model_dir, batch=len(bodies))
    results = handler.handle([{"body": b} for b in bodies], ctx)
    return statuses(ctx, len(bodies)), decoded(results)


def test_answers_match_the_model(handler, mlp_reference):
    data = rows(6)
    codes, answers = run(handler, [{"data": r} for r in data])
    assert codes == [200] * 6
    with torch.inference_mode():
        expected = torch.softmax(mlp_reference(torch.tensor(data, dtype=torch.float32)), 1)
    for ans, exp in zip(answers, expected):
        assert ans["class_id"] == int(exp.argmax())
        assert len(ans["probabilities"]) == 10
        assert math.isclose(sum(ans["probabilities"]), 1.0, abs_tol=1e-4)
        assert np.allclose(ans["probabilities"], exp.numpy(), atol=1e-5)


def test_a_batch_with_one_bad_item_fails_only_that_item(handler):
    good = rows(3)
    bodies = [{"data": good[0]}, {"data": good[1]}, {"data": [1, 2]}, {"data": good[2]}]
    codes, answers = run(handler, bodies)
    assert codes == [200, 200, 400, 200]
    assert answers[2]["code"] == 400 and answers[2]["type"] == "BadRequest"
    assert "shape [2]" in answers[2]["message"] and "100 numbers" in answers[2]["message"]
    alone = run(handler, [{"data": good[1]}])[1]
    assert_same_answers([answers[1]], alone)  # the bad neighbour changed nothing


def test_a_list_of_rows_gets_a_list_of_answers(handler):
    data = rows(3)
    codes, [answer] = run(handler, [{"data": data}])
    assert codes == [200] and len(answer) == 3
    singles = run(handler, [{"data": r} for r in data])[1]
    assert_same_answers(answer, singles)


def test_raw_bytes_and_text_bodies_are_decoded(handler):
    body = json.dumps({"data": rows(1)[0]})
    codes, answers = run(handler, [body.encode(), body, bytearray(body.encode())])
    assert codes == [200, 200, 200] and answers[0] == answers[1] == answers[2]


BAD = [
    (b"", "empty request body"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\xfa", "not UTF-8"),
    ([1, 2, 3], "missing field 'data'"),
    ({"x": 1}, "missing field 'data'"),
    ({"data": "a string"}, "only numbers"),
    ({"data": [True] * 100}, "only numbers"),
    ({"data": ["1.0"] * 100}, "only numbers"),
    ({"data": [None] * 100}, "only numbers"),
    ({"data": [[1.0] * 100, [1.0] * 99]}, "rectangular"),
    ({"data": [[[0.0] * 100]]}, "shape [1, 1, 100]"),
    ({"data": []}, "shape [0]"),
    ({"data": [0.0] * 101}, "shape [101]"),
    ({"data": [10**400] + [0] * 99}, "only numbers"),
    ({"data": [1e300] + [0.0] * 99}, "too large for float32"),
    (b'{"data": [NaN' + b", 0" * 99 + b"]}", "NaN"),
    ({"data": [[0.0] * 100] * 1025}, "at most 1024"),
]


@pytest.mark.parametrize("body, message", BAD, ids=[m for _, m in BAD])
def test_bad_items_get_400_with_a_clear_message(handler, body, message):
    good = {"data": rows(1)[0]}
    codes, answers = run(handler, [good, body, good])
    assert codes == [200, 400, 200]
    assert message in answers[1]["message"]
    assert_same_answers([answers[0]], [answers[2]])


def test_a_missing_body_key_is_a_400_not_a_crash(handler):
    ctx = make_context(handler.model_dir, batch=2)
    results = handler.handle([{}, {"data": {"data": rows(1)[0]}}], ctx)
    assert statuses(ctx, 2) == [400, 200]
    assert "empty" in json.loads(results[0])["message"]


def test_answers_are_json_with_a_content_type(handler):
    ctx = make_context(handler.model_dir, batch=1)
    handler.handle([{"body": {"data": rows(1)[0]}}], ctx)
    assert ctx.get_response_content_type(0) == "application/json"


def test_one_torch_thread_per_worker(handler):
    assert torch.get_num_threads() == 1


def test_pickle_weights_are_refused(mlp_run, tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "model.pt")
    shutil.copy(mlp_run / "meta.json", tmp_path / "meta.json")
    with pytest.raises(ValueError, match="safetensors only"):
        mlp_handler.MLPHandler().initialize(make_context(tmp_path, serialized_file="model.pt"))


def test_binary_npy_bodies_skip_json(handler, mlp_reference):
    import io

    data = np.asarray(rows(3, seed=5), dtype=np.float32)

    def npy(array):
        buf = io.BytesIO()
        np.save(buf, array)
        return buf.getvalue()

    codes, answers = run(
        handler, [npy(data), npy(data[0]), npy(data[:, :10]), b"\x93NUMPYbroken", npy(np.array(["a"] * 100))]
    )
    assert codes == [200, 200, 400, 400, 400]
    assert_same_answers(answers[0], run(handler, [{"data": data.tolist()}])[1][0])
    assert answers[1]["class_id"] == answers[0][0]["class_id"]
    assert "cannot be read" in answers[3]["message"] and "only numbers" in answers[4]["message"]


def test_gzip_bodies_are_unpacked_and_gzip_bombs_refused(handler):
    import gzip
    import zlib

    data = np.asarray(rows(2, seed=6), dtype=np.float32)
    body = json.dumps({"data": data.tolist()}).encode()
    bomb = zlib.compressobj(1, zlib.DEFLATED, 31)
    bomb = bomb.compress(b" " * (65 * 1024 * 1024)) + bomb.flush()  # 65 MiB of spaces in ~65 KB
    packed = gzip.compress(body)
    codes, answers = run(handler, [packed, body, packed[:-9], bomb, packed + b"junk"])
    assert codes == [200, 200, 400, 413, 400]
    assert_same_answers(answers[0], answers[1])  # the same answer, packed or not
    # unpacked no further than the model's body limit (4 MiB for mlp)
    assert "truncated" in answers[2]["message"] and "more than 4,194,304 bytes" in answers[3]["message"]
    assert "data after its end" in answers[4]["message"]
