"""Every bound of the handlers, and the item-by-item retry, with a hand-built context: a bad item
gets its own 4xx (JSON {code, type, message}) and its batch-mates answer exactly as they would
alone; nothing a request sends makes the handler allocate before it has checked the size."""

import gzip
import io
import json
import tracemalloc

import numpy as np
import pytest
import torchship_base_handler as base
from mlp_handler import MLPHandler
from PIL import Image

from tests.conftest import load_handler
from tests.helpers import assert_same_answers, rows

from .handler_context import decoded, run_batch, run_stream, statuses

GOOD = {"data": rows(1, seed=3)[0]}


@pytest.fixture(scope="module")
def mlp(mlp_run, tmp_path_factory):
    return load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)


def run(handler, bodies, headers=None):
    ctx, results = run_batch(handler, bodies, headers)
    return statuses(ctx, len(bodies)), decoded(results), ctx


def assert_error(answer, code, words):
    assert answer["code"] == code and answer["type"] and words in answer["message"], answer


def npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# ---------------------------------------------------------------- nesting depth


def test_json_nested_1000_deep_in_2kb_is_that_items_400(mlp):
    deep = b"[" * 1000 + b"]" * 1000  # 2 KB: Python's decoder raises RecursionError on it
    deep_obj = b'{"data": ' + b"[" * 900 + b"]" * 900 + b"}"  # under Python's limit: decoded, then refused
    codes, answers, _ = run(mlp, [GOOD, deep, deep_obj, json.dumps(GOOD).encode()])
    assert codes == [200, 400, 400, 200]
    assert_error(answers[1], 400, "nested too deeply") and assert_error(answers[2], 400, "at most 32 levels")
    assert_same_answers([answers[0]], [answers[3]])


def test_depth_is_checked_on_bodies_already_decoded_too(mlp):
    value = GOOD["data"]
    for _ in range(40):
        value = [value]
    codes, answers, _ = run(mlp, [{"data": value}, GOOD])
    assert codes == [400, 200] and "at most 32 levels" in answers[0]["message"]
    shallow = {"data": [[GOOD["data"]]]}  # 3 levels: a legitimate shape error, not a depth error
    assert "shape" in run(mlp, [shallow])[1][0]["message"]


# ---------------------------------------------------------------- body size


def test_a_body_over_the_models_limit_is_a_json_413(mlp):
    big = b'{"data": [' + b"0.0," * (MLPHandler.max_body_bytes // 4) + b"0.0]}"
    packed = gzip.compress(big)  # small on the wire, over the limit once unpacked
    codes, answers, _ = run(mlp, [big, GOOD, packed])
    assert codes == [413, 200, 413]
    assert_error(answers[0], 413, "at most 4,194,304") and answers[0]["type"] == "PayloadTooLarge"
    assert_error(answers[2], 413, "unpacks to more than 4,194,304 bytes")


# ---------------------------------------------------------------- .npy headers


def lying_npy(shape, dtype="<f8", payload=b"\0" * 64):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


def test_npy_header_claiming_a_terabyte_is_a_400_without_allocating(mlp):
    tracemalloc.start()
    try:
        codes, answers, _ = run(
            mlp, [lying_npy((10**12,)), GOOD, lying_npy((10**6, 100)), lying_npy((2,), "|O"), lying_npy((1,) * 9)]
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert codes == [400, 200, 400, 400, 400]
    assert_error(answers[0], 400, "declares shape [1000000000000] of float64 (8,000,000,000,000 bytes) but 64")
    assert "not a plain numeric type" in answers[3]["message"] and "at most 8" in answers[4]["message"]
    assert peak < 50 * 1024 * 1024  # nothing of the declared size was allocated


def test_an_honest_npy_still_works(mlp):
    x = np.asarray(rows(2, seed=4), dtype=np.float32)
    codes, answers, _ = run(mlp, [npy(x), npy(np.asfortranarray(x)), {"data": x.tolist()}])
    assert codes == [200, 200, 200]
    assert_same_answers(answers[0], answers[2]) and assert_same_answers(answers[1], answers[2])


# ---------------------------------------------------------------- Open Inference Protocol


def v2(shape, data=None, **extra):
    spec = {"name": "x", "shape": shape, "datatype": "FP32"}
    spec.update({"data": data} if data is not None else {})
    return {"inputs": [spec], **extra}


def test_v2_huge_declared_shapes_are_refused_before_allocating(mlp):
    tracemalloc.start()
    try:
        codes, answers, _ = run(
            mlp,
            [
                v2([2**32, 2**32], []),
                v2([1, 100], GOOD["data"]),
                v2([2**20, 2**20], []),
                v2([0, 10**40], []),
                v2([1] * 9, [1.0]),
            ],
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert codes == [400, 200, 400, 400, 400]
    assert "shape must be at most 8 non-negative integers of at most 16,777,216" in answers[0]["message"]
    assert "declares 1,099,511,627,776 values; at most 16,777,216" in answers[2]["message"]
    assert all(a["error"] == a["message"] for a in answers[:1] + answers[2:])
    assert peak < 50 * 1024 * 1024


@pytest.mark.parametrize(
    "request_body, words",
    [
        (v2([1, 100], GOOD["data"], id="x" * 300), "'id' must be a string of at most 256"),
        (v2([1, 100], GOOD["data"], id=["a"]), "'id' must be a string"),
        (v2([1, 100], GOOD["data"], parameters=[1]), "'parameters' must be an object"),
        (v2([1, 100], GOOD["data"], outputs={"a": 1}), "'outputs' must be a list"),
        (v2([1, 100], GOOD["data"], outputs=[{"name": "class_id", "parameters": 5}]), "'outputs' must be a list"),
        ({"inputs": 5}, "'inputs' must be a list"),
        ({"inputs": []}, "'inputs' must be a list"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": ["FP32"], "data": [1]}]}, "datatype among"),
        ({"inputs": [{"name": "x" * 10000, "shape": [1], "datatype": "FP33"}]}, "datatype among"),
        (v2([1, 100], {"a": 1}), "'data' must be a list"),
    ],
)
def test_v2_request_fields_are_checked(mlp, request_body, words):
    codes, answers, _ = run(mlp, [request_body, GOOD])
    assert codes == [400, 200]
    assert words in answers[0]["message"] and answers[0]["error"] == answers[0]["message"]
    assert len(json.dumps(answers[0])) < 600  # nothing the request sent is echoed at length


def test_v2_binary_errors_are_plain_json_with_the_error_field(mlp):
    head = json.dumps(
        {
            "inputs": [
                {"name": "i", "shape": [2**32, 2**32], "datatype": "FP32", "parameters": {"binary_data_size": 400}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    good_head = json.dumps(
        {
            "inputs": [{"name": "i", "shape": [1, 100], "datatype": "FP32", "parameters": {"binary_data_size": 400}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    x = np.asarray(GOOD["data"], dtype=np.float32).tobytes()
    bodies = [head + x, good_head + x, b"{broken" + x, good_head + x + b"extra"]
    lengths = [len(head), len(good_head), 7, len(good_head)]
    ctx, results = run_batch(mlp, bodies, [{"Inference-Header-Content-Length": str(n)} for n in lengths])
    assert statuses(ctx, 4) == [400, 200, 400, 400]
    for i in (0, 2, 3):
        error = json.loads(results[i])  # the whole body is JSON: no binary part
        assert error["error"] == error["message"] and error["code"] == 400
        assert "Inference-Header-Content-Length" not in ctx.get_response_headers(i)
        assert ctx.get_response_content_type(i) == "application/json"
    assert "Inference-Header-Content-Length" in ctx.get_response_headers(1)
    assert "5 bytes of binary data belong to no input" in json.loads(results[3])["message"]


def test_tritonclient_reads_our_v2_errors():
    tritonclient_utils = pytest.importorskip("tritonclient.http._utils")

    class Response:  # what tritonclient's HTTP layer hands to _get_error
        status_code = 400

        def __init__(self, body):
            self.body = body

        def read(self):
            return self.body

    body = json.dumps(base.ItemError("input 'x': shape too big").to_dict(v2=True)).encode()
    error = tritonclient_utils._get_error(Response(body))
    assert error.message() == "input 'x': shape too big" and error.status() == "400"


# ---------------------------------------------------------------- any exception is one item's answer


class Fragile(MLPHandler):
    """mlp whose parse and forward fail in chosen ways for marked rows (first value 7777 etc.)."""

    def parse(self, payload):
        marker = payload.get("boom") if isinstance(payload, dict) else None
        if marker is not None:
            raise {
                "recursion": RecursionError("deep"),
                "memory": MemoryError(),
                "type": TypeError("int + str"),
                "overflow": OverflowError("too big"),
            }[marker]
        return super().parse(payload)

    def predict(self, inputs):
        if any(rows[0, 0] == 7777 for rows, _ in inputs):
            raise RuntimeError("a kernel failed")
        if len(inputs) > 1 and any(rows[0, 0] == 8888 for rows, _ in inputs):
            return super().predict(inputs)[:-1]  # a wrong number of outputs for a batch
        if any(rows[0, 0] == 9999 for rows, _ in inputs):
            return [{"class_id": 1, "probabilities": [float("nan")]} for _ in inputs]  # not JSON-able
        return super().predict(inputs)


@pytest.fixture(scope="module")
def fragile(mlp):
    handler = Fragile()
    handler.__dict__.update(mlp.__dict__)
    return handler


def marked(value):
    return {"data": [value] + GOOD["data"][1:]}


def test_any_exception_while_parsing_is_that_items_4xx(fragile):
    codes, answers, _ = run(
        fragile, [GOOD, {"boom": "recursion"}, {"boom": "memory"}, {"boom": "type"}, {"boom": "overflow"}, GOOD]
    )
    assert codes == [200, 400, 413, 400, 400, 200]
    assert "nested too deeply" in answers[1]["message"]
    assert "more memory than this model allows" in answers[2]["message"]
    assert "cannot be read (TypeError: int + str)" in answers[3]["message"]
    assert "OverflowError" in answers[4]["message"]
    assert all(set(a) == {"code", "type", "message"} for a in answers[1:5])


def test_a_failing_batch_forward_is_retried_item_by_item(fragile, mlp):
    good = [{"data": r} for r in rows(3, seed=11)]
    codes, answers, _ = run(fragile, [good[0], marked(7777), good[1], marked(9999), good[2]])
    assert codes == [200, 500, 200, 500, 200]
    assert_error(answers[1], 500, "the model failed on this request (RuntimeError: a kernel failed)")
    assert_error(answers[3], 500, "ValueError")  # its answer could not be encoded: its own 500
    alone = run(mlp, good)[1]
    assert_same_answers([answers[0], answers[2], answers[4]], alone)


def test_a_wrong_number_of_outputs_is_retried_item_by_item(fragile, mlp):
    good = [{"data": r} for r in rows(2, seed=12)]
    codes, answers, _ = run(fragile, [good[0], marked(8888), good[1]])
    assert codes == [200, 200, 200]  # alone, each item is answered
    assert_same_answers([answers[0], answers[2]], run(mlp, good)[1])


# ---------------------------------------------------------------- recommender


@pytest.fixture(scope="module")
def recommender(recommender_run, tmp_path_factory):
    return load_handler(recommender_run, "recommender_handler", "RecommenderHandler", tmp_path_factory)


def test_recommender_never_echoes_a_huge_user_id(recommender):
    codes, answers, _ = run(
        recommender,
        [
            json.dumps({"user_id": "u" * 6_000_000}).encode(),
            {"user_id": 10**4000},
            {"user_id": "u" * 128, "k": 2},
            {"user_id": "196", "k": 2},
        ],
    )
    assert codes == [413, 400, 200, 200]  # 6 MB: over the recommender's 64 KiB body limit when sent as bytes
    assert "'user_id' is too long: at most 128 characters" in answers[1]["message"]
    assert answers[2]["user_id"] == "u" * 128 and answers[2]["fallback"] == "popular"
    codes, answers, _ = run(recommender, [json.dumps({"user_id": "u" * 60_000}).encode()])
    assert codes == [400] and len(json.dumps(answers[0])) < 300


# ---------------------------------------------------------------- fashion


@pytest.fixture(scope="module")
def fashion(fashion_run, tmp_path_factory):
    return load_handler(fashion_run, "fashion_handler", "FashionHandler", tmp_path_factory)


def test_fashion_png_bomb_is_refused_from_its_header(fashion):
    bomb = io.BytesIO()
    Image.new("L", (6000, 6000)).save(bomb, format="PNG", optimize=True)
    assert len(bomb.getvalue()) < 60_000  # 36 million pixels in a few tens of KB
    strip = io.BytesIO()
    Image.new("L", (20_000, 1)).save(strip, format="PNG")
    good = {"image": [[0] * 10 + [200] * 8 + [0] * 10] * 28}
    tracemalloc.start()
    try:
        codes, answers, _ = run(fashion, [bomb.getvalue(), good, strip.getvalue()])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert codes == [400, 200, 400]
    assert "6000x6000 pixels: at most 4,194,304" in answers[0]["message"]
    assert "20000x1 pixels" in answers[2]["message"]
    assert peak < 20 * 1024 * 1024  # 36 MB of pixels were never decoded


def test_fashion_image_counts_are_checked_before_converting(fashion):
    many = np.zeros((300, 28, 28), dtype=np.uint8)
    spec = {"inputs": [{"name": "x", "shape": [300, 28, 28], "datatype": "UINT8", "data": many.reshape(-1).tolist()}]}
    codes, answers, _ = run(fashion, [npy(many), spec, npy(np.zeros((2, 28, 28), dtype=np.uint8))])
    assert codes == [400, 400, 200]
    assert all("at most 256 images" in a["message"] for a in answers[:2])


# ---------------------------------------------------------------- embedder


@pytest.fixture(scope="module")
def embedder(embedder_run, tmp_path_factory):
    return load_handler(embedder_run, "embedder_handler", "EmbedderHandler", tmp_path_factory)


def test_embedder_bounds_the_tokens_of_a_request(embedder):
    long_text = "word " * 399  # about 400 tokens: cut at 256
    codes, answers, _ = run(embedder, [{"texts": [long_text] * 17}, {"texts": ["a film"]}, {"texts": [long_text] * 16}])
    assert codes == [400, 200, 200]
    assert "4,352 tokens in all; at most 4,096" in answers[0]["message"]


def test_embedder_chunks_equal_one_padded_batch(embedder):
    texts = ["short", "word " * 300, "a medium sentence about a film", "x"]
    together = run(embedder, [{"texts": texts}])[1][0]["embeddings"]
    alone = [run(embedder, [{"texts": [t]}])[1][0]["embeddings"][0] for t in texts]
    assert np.allclose(together, alone, atol=1e-5)


# ---------------------------------------------------------------- answers split back per request


def test_per_request_hands_each_request_its_own_answers_in_order():
    answers = ["a0", "b0", "b1", "b2", "c0"]
    assert base.BatchHandler.per_request(answers, [1, 3, 1]) == [["a0"], ["b0", "b1", "b2"], ["c0"]]
    assert base.BatchHandler.per_request(answers, [1, 3, 1], [True, False, False]) == ["a0", ["b0", "b1", "b2"], ["c0"]]
    with pytest.raises(RuntimeError, match="5 answers for 4 items"):  # a bug: the forward is retried item by item
        base.BatchHandler.per_request(answers, [1, 3])


# ---------------------------------------------------------------- textgen


@pytest.fixture(scope="module")
def textgen(textgen_run, tmp_path_factory):
    return load_handler(textgen_run, "textgen_handler", "TextgenHandler", tmp_path_factory)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"temperature": 1e-45}, "'temperature' must be 0 (greedy) or a number from 0.01 to 2"),
        ({"temperature": float("nan")}, "'temperature'"),
        ({"temperature": 2.5}, "'temperature'"),
        ({"top_k": 10**6}, "'top_k' must be an integer from 1 to"),
        ({"max_new_tokens": 10**9}, "'max_new_tokens' must be an integer from 1 to 500"),
        ({"prompt": "x" * 501}, "at most 500 characters"),
    ],
)
def test_textgen_generation_parameters_are_bounded(textgen, params, words):
    good = {"prompt": "The film", "max_new_tokens": 12, "seed": 5}
    codes, answers = run_stream(textgen, [good, {**good, **params}, good])
    assert codes == [200, 400, 200]
    assert words in answers[1]["message"]
    assert answers[0] == answers[2] and len(answers[0]) == 12
    assert run_stream(textgen, [good])[1][0] == answers[0]  # its batch-mate changed nothing


def test_textgen_the_smallest_temperature_allowed_generates(textgen):
    codes, answers = run_stream(textgen, [{"prompt": "A", "max_new_tokens": 9, "temperature": 0.01, "seed": 1}])
    assert codes == [200] and len(answers[0]) == 9


def test_textgen_a_failing_step_is_retried_request_by_request(textgen, monkeypatch):
    good = {"prompt": "The plot", "max_new_tokens": 10, "seed": 3}
    expected = run_stream(textgen, [good])[1][0]
    original = type(textgen)._logits

    def fragile_logits(self, active, streams):
        if any(streams[i][0] == 0 for i in active):  # a prompt starting with an unknown character breaks it
            raise RuntimeError("a kernel failed")
        return original(self, active, streams)

    monkeypatch.setattr(type(textgen), "_logits", fragile_logits)
    codes, answers = run_stream(textgen, [good, {"prompt": "\u2603 snow", "max_new_tokens": 10}, good])
    assert codes == [200, 500, 200]
    assert "the model failed on this request (RuntimeError: a kernel failed)" in answers[1]["message"]
    assert answers[0] == answers[2] == expected


def test_every_handler_refuses_deep_json_and_oversize_bodies(recommender, textgen, embedder):
    deep = b"[" * 1000 + b"]" * 1000
    for handler, good in ((recommender, {"user_id": "196", "k": 2}), (embedder, {"texts": ["a film"]})):
        codes, answers, _ = run(handler, [deep, good, b" " * (handler.max_body_bytes + 1)])
        assert codes == [400, 200, 413] and "nested too deeply" in answers[0]["message"]
    codes, answers = run_stream(
        textgen, [deep, {"prompt": "A", "max_new_tokens": 3}, b" " * (textgen.max_body_bytes + 1)]
    )
    assert codes == [400, 200, 413]


def test_textgen_reads_requests_as_every_handler_does(textgen):
    """gzip bodies, and Open Inference Protocol requests (by their binary header or their JSON),
    go through the base's reading: the same bounds and answers as in every other handler."""
    good = {"prompt": "The film", "max_new_tokens": 8, "seed": 2}
    expected = run_stream(textgen, [good])[1][0]
    head = json.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}]}
    ).encode()
    bodies = [
        gzip.compress(json.dumps(good).encode()),
        head + np.int64(7).tobytes(),
        head,
        good,
        gzip.compress(b'{"prompt": "' + b"x" * textgen.max_body_bytes + b'"}'),
    ]
    headers = [
        {},
        {"Inference-Header-Content-Length": str(len(head))},
        {"Inference-Header-Content-Length": str(len(head) + 99)},
        {},
        {},
    ]
    codes, answers = run_stream(textgen, bodies, headers)
    assert codes == [200, 501, 400, 200, 413]
    assert answers[0] == answers[3] == expected
    assert answers[1]["error"] == answers[1]["message"] and "Open Inference Protocol" in answers[1]["message"]
    assert "outside the body" in answers[2]["error"]
    assert "unpacks to more than" in answers[4]["message"]


def test_the_worker_hands_every_body_over_undecoded(mlp):
    """After initialize, TorchServe's worker passes JSON bodies as bytes (so the bounds above see them)."""
    import socket
    import struct

    from ts.protocol.otf_message_handler import _retrieve_input_data

    body = b"[" * 1000 + b"]" * 1000
    a, b = socket.socketpair()
    with a, b:
        for part in (b"body", b"application/json", body):
            a.sendall(struct.pack("!i", len(part)) + part)
        assert _retrieve_input_data(b)["value"] == body


def test_decrypted_weights_are_read_as_views_exactly_as_safetensors_reads_them():
    import ctypes
    import struct

    import torch
    from safetensors.torch import load, save
    from torchship_base_handler import tensors_in

    state = {
        "w": torch.randn(5, 3),
        "i": torch.arange(7, dtype=torch.int64),
        "h": torch.randn(4, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 2),
        "flag": torch.tensor([True, False]),
    }
    buffer = bytearray(save(state))
    got, want = tensors_in(buffer), load(bytes(buffer))
    assert set(got) == set(want)
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)
    start = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
    assert all(start <= t.data_ptr() < start + len(buffer) for t in got.values() if t.numel())  # views, no copy

    def crafted(header: dict, data: bytes = b"\0" * 16) -> bytearray:
        raw = json.dumps(header).encode()
        return bytearray(struct.pack("<Q", len(raw)) + raw + data)

    bad = [
        bytearray(b"\x01\x02"),  # shorter than its header length
        bytearray(struct.pack("<Q", 1 << 40) + b"{}"),  # a header longer than the buffer
        crafted({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}),  # past the data
        crafted({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}),  # size disagrees
        crafted({"x": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}),  # unknown dtype
        crafted({"x": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}),  # negative shape
        crafted({"x": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}),  # reversed
        crafted(["not", "an", "object"]),
    ]
    for buf in bad:
        with pytest.raises(ValueError):
            tensors_in(buf)


def test_tensors_in_refuses_what_safetensors_and_verify_refuse():
    """r02: overlap, gaps, trailing bytes, unaligned tensors, a name twice, odd types and deep nesting
    are each a ValueError before anything is viewed, as safetensors itself refuses them; verify's
    weights check (what package runs too) gives the same answer for every case."""
    import io
    import struct

    from safetensors.torch import load, save
    from torchship_base_handler import tensors_in

    from torchship.archiver.verify import _safetensors_header_problem

    def st(header: dict | list | str, data: bytes) -> bytearray:
        raw = header.encode() if isinstance(header, str) else json.dumps(header).encode()
        return bytearray(struct.pack("<Q", len(raw)) + raw + data)

    def f32(*v: float) -> bytes:
        return struct.pack(f"<{len(v)}f", *v)

    a4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    bad = {
        "overlap": st({"a": a4, "b": a4}, f32(1, 2, 3, 4)),
        "partial overlap": st({"a": a4, "b": {**a4, "data_offsets": [8, 24]}}, f32(1, 2, 3, 4, 5, 6)),
        "gap": st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, f32(9, 9, 1, 2)),
        "trailing": st({"a": a4}, f32(1, 2, 3, 4) + b"garbage!"),
        "duplicate": st(
            '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
            f32(1, 2),
        ),
        "dtype a list": st({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, f32(1)),
        "shape of bools": st({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, f32(1, 2)),
        "float offsets": st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}}, f32(1)),
        "metadata a list": st({"__metadata__": [1, 2], "a": {**a4, "shape": [1], "data_offsets": [0, 4]}}, f32(1)),
        "metadata not strings": st({"__metadata__": {"k": 1}}, b""),
        "extra key": st({"a": {**a4, "extra": 1}}, f32(1, 2, 3, 4)),
        "not UTF-8": bytearray(struct.pack("<Q", 4) + b"\xff\xfe{}"),
        "NaN": st('{"__metadata__":{},"a":NaN}', b""),
        "nested 1000 deep": bytearray(struct.pack("<Q", 2000) + b"[" * 1000 + b"]" * 1000),
        "nested 100000 deep": bytearray(struct.pack("<Q", 200000) + b"[" * 100000 + b"]" * 100000),
    }
    # an F32 tensor at an odd absolute offset: a header of odd length, the tensor right after it
    odd = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    odd += b" " * (1 - len(odd) % 2)
    bad["unaligned"] = bytearray(struct.pack("<Q", len(odd)) + odd + f32(1))
    for name, buf in bad.items():
        with pytest.raises(ValueError, match="not a safetensors file torchship loads"):
            tensors_in(bytearray(buf))
        problem = _safetensors_header_problem(io.BytesIO(bytes(buf)), len(buf))
        assert problem, name
        if name not in ("unaligned", "NaN", "metadata not strings", "extra key"):  # safetensors copies, so
            with pytest.raises(Exception):  # noqa: B017  it lets unaligned data and extra keys by
                load(bytes(buf))
    assert "nested too deeply" in _safetensors_header_problem(io.BytesIO(bytes(bad["nested 1000 deep"])), 2008)
    # what safetensors writes passes all three: tensors of every size and order, empty ones, metadata
    import torch

    state = {
        "b": torch.tensor([True, False, True]),
        "w": torch.randn(5, 3),
        "h": torch.randn(3, dtype=torch.float16),
        "i": torch.arange(7, dtype=torch.int64),
        "e": torch.zeros(0, 2),
        "s": torch.tensor(2.5),
    }
    good = bytearray(save(state, metadata={"format": "pt"}))
    assert _safetensors_header_problem(io.BytesIO(bytes(good)), len(good)) is None
    got = tensors_in(good)
    assert all(torch.equal(got[k], v) for k, v in load(bytes(good)).items())
