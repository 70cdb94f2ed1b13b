"""Bad requests mixed into the same batches as good ones, for all six example handlers, on a real
TorchServe: every bad item gets a 4xx with a JSON {code, type, message}, every good item the
answer the same handler code gives in-process, never a 5xx, and the server stays healthy.

Each model is registered as fuzz-<name> with batches of 8 gathered for up to a second, and each
round sends 8 requests at once, so a round is one batch: the handlers' X-Batch-Size answer header
shows it. Rounds: the named attacks (deep JSON, huge v2 shapes, a lying .npy header, a PNG bomb,
a gzip bomb, oversize bodies, a tiny temperature, a huge user_id ...), then at least 1,000
hypothesis-drawn malformed bodies per model.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import load_handler
from tests.strategies import GOOD, as_body, malformed
from tests.unit.handler_context import run_batch, run_stream
from torchship import archiver
from torchship import errors as E

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]  # setup trains six models

MODELS = ["mlp", "sentiment", "fashion", "recommender", "embedder", "textgen"]
HANDLERS = {
    "mlp": ("mlp_handler", "MLPHandler"),
    "sentiment": ("sentiment_handler", "SentimentHandler"),
    "fashion": ("fashion_handler", "FashionHandler"),
    "recommender": ("recommender_handler", "RecommenderHandler"),
    "embedder": ("embedder_handler", "EmbedderHandler"),
    "textgen": ("textgen_handler", "TextgenHandler"),
}
BATCH = 8
GOOD_PER_ROUND = 2
BAD_PER_ROUND = BATCH - GOOD_PER_ROUND
EXAMPLES = 167  # x 6 malformed = 1,002 per model
DELAY_MS = 1000  # a round of 8 fills its batch at once; the delay only matters if one is late
V2_HEADER = "Inference-Header-Content-Length"
JSON = {"Content-Type": "application/json"}


# ---------------------------------------------------------------- good requests (several per model)


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


_ROWS = np.random.default_rng(0).standard_normal((3, 100)).round(4).astype(np.float32)
_SHIRT = [[0] * 10 + [200] * 8 + [0] * 10] * 28
GOODS: dict[str, list[tuple[bytes, dict]]] = {
    "mlp": [
        (GOOD["mlp"], JSON),
        (as_body({"data": _ROWS.tolist()}), JSON),
        (_npy(_ROWS[:2]), {"Content-Type": "application/x-npy"}),
        (
            as_body(
                {
                    "id": "good-v2",
                    "inputs": [{"name": "input-0", "shape": [1, 100], "datatype": "FP32", "data": _ROWS[2].tolist()}],
                }
            ),
            JSON,
        ),
        (gzip.compress(as_body({"data": _ROWS[1].tolist()})), {**JSON, "Content-Encoding": "gzip"}),
    ],
    "sentiment": [
        (GOOD["sentiment"], JSON),
        (as_body({"texts": ["a dull, lifeless mess", "sheer joy"]}), JSON),
        (as_body({"text": "not funny at all"}), JSON),
    ],
    "fashion": [
        (GOOD["fashion"], JSON),
        (_png(np.array(_SHIRT).T), {"Content-Type": "image/png"}),
        (_npy(np.array([_SHIRT], dtype=np.uint8)), {"Content-Type": "application/x-npy"}),
    ],
    "recommender": [
        (GOOD["recommender"], JSON),
        (as_body({"user_id": 1, "k": 3, "exclude_seen": False}), JSON),
        (as_body({"user_id": "nobody-known", "k": 4}), JSON),
    ],
    "embedder": [
        (as_body({"texts": ["A man is eating food."]}), JSON),
        (as_body({"query": "a funny film", "candidates": ["a comedy", "a war report"]}), JSON),
    ],
    "textgen": [
        (as_body({"prompt": "This film", "max_new_tokens": 9, "temperature": 0, "seed": 1}), JSON),
        (as_body({"prompt": "The plot", "max_new_tokens": 6, "temperature": 0}), JSON),
    ],
}


# ---------------------------------------------------------------- attacks (every one a 4xx)


def _lying_npy(shape) -> bytes:
    header = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64


def _png_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, format="PNG", optimize=True)  # 36 Mpx in ~35 KB
    return buf.getvalue()


def _gzip_bomb() -> bytes:
    pack = zlib.compressobj(9, zlib.DEFLATED, 31)
    return pack.compress(b" " * (7 * 1024 * 1024)) + pack.flush()  # 7 MiB of spaces: over every model's limit


_HUGE_V2 = {"inputs": [{"name": "x", "shape": [2**32, 2**32], "datatype": "FP32", "data": []}]}
_HUGE_V2_BINARY = json.dumps(
    {"inputs": [{"name": "x", "shape": [2**20, 2**20], "datatype": "FP32", "parameters": {"binary_data_size": 400}}]}
).encode()
BODY_LIMITS = {
    "mlp": 4 << 20,
    "sentiment": 6 << 20,
    "fashion": 6 << 20,
    "recommender": 64 << 10,
    "embedder": 1 << 20,
    "textgen": 64 << 10,
}


def attacks(model: str) -> list[tuple[str, bytes, dict]]:
    common = [
        ("json nested 1,000 deep (2 KB)", b"[" * 1000 + b"]" * 1000, JSON),
        ("object nested 900 deep", b'{"a":' * 900 + b"1" + b"}" * 900, JSON),
        ("v2 shape [2^32, 2^32]", as_body(_HUGE_V2), JSON),
        (
            "v2 binary, shape [2^20, 2^20]",
            _HUGE_V2_BINARY + b"\0" * 400,
            {V2_HEADER: str(len(_HUGE_V2_BINARY)), "Content-Type": "application/octet-stream"},
        ),
        ("v2 binary header past the body", b'{"inputs": []}', {V2_HEADER: "999999"}),
        (".npy header claiming shape (10^12,)", _lying_npy((10**12,)), {"Content-Type": "application/x-npy"}),
        ("gzip bomb", _gzip_bomb(), {"Content-Encoding": "gzip"}),
        ("body over the model's limit", b" " * (BODY_LIMITS[model] + 1), JSON),
        ("a 5,000-digit number", b'{"x": 1' + b"0" * 5000 + b"}", JSON),
        ("binary noise", bytes(range(256)) * 4, {"Content-Type": "application/octet-stream"}),
    ]
    specific = {
        "mlp": [
            ("1,025 rows", as_body({"data": [[0.0] * 100] * 1025}), JSON),
            (
                "v2 binary size mismatch",
                _HUGE_V2_BINARY.replace(b"[1048576, 1048576]", b"[1, 100]") + b"\0" * 4,
                {V2_HEADER: str(len(_HUGE_V2_BINARY) - 10)},
            ),
        ],
        "sentiment": [
            ("257 texts", as_body({"texts": ["fine"] * 257}), JSON),
            ("5,001 characters", as_body({"text": "a" * 5001}), JSON),
        ],
        "fashion": [
            ("6000x6000 PNG bomb", _png_bomb(), {"Content-Type": "image/png"}),
            ("300 images", _npy(np.zeros((300, 28, 28), dtype=np.uint8)), {"Content-Type": "application/x-npy"}),
        ],
        "recommender": [
            ("6 MB user_id", as_body({"user_id": "u" * 6_000_000}), JSON),
            ("60,000-character user_id", as_body({"user_id": "u" * 60_000}), JSON),
            ("user_id 10^40", as_body({"user_id": 10**40}), JSON),
        ],
        "embedder": [
            ("17 texts of 256 tokens", as_body({"texts": ["word " * 300] * 17}), JSON),
            ("65 texts", as_body({"texts": ["a"] * 65}), JSON),
        ],
        "textgen": [
            ("temperature 1e-45", as_body({"prompt": "A", "temperature": 1e-45}), JSON),
            ("top_k 10^9", as_body({"prompt": "A", "top_k": 10**9}), JSON),
            ("max_new_tokens 10^9", as_body({"prompt": "A", "max_new_tokens": 10**9}), JSON),
        ],
    }
    return common + specific[model]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fuzz_models(client, store, key_dir, example_archives, embedder_run, textgen_run):
    archives = dict(example_archives)
    for name, run in (("embedder", embedder_run), ("textgen", textgen_run)):
        archives[name] = archiver.package(archiver.example_spec(name, run, "1.0"), store, key_dir, force=True).path
    for name in MODELS:
        client.register(
            archives[name].name,
            model_name=f"fuzz-{name}",
            initial_workers=1,
            batch_size=BATCH,
            max_batch_delay=DELAY_MS,
        )
    yield MODELS
    for name in MODELS:
        client.unregister(f"fuzz-{name}")


@pytest.fixture(scope="module")
def expected(request, tmp_path_factory):
    """Each good body's answer from the same handler code, in-process (a hand-built context)."""
    runs = {name: request.getfixturevalue(f"{name}_run") for name in MODELS}
    out: dict[str, list] = {}
    for name in MODELS:
        handler = load_handler(runs[name], *HANDLERS[name], tmp_path_factory)
        out[name] = []
        for body, headers in GOODS[name]:  # each with its headers, as the server gets it
            if name == "textgen":
                codes, [answer] = run_stream(handler, [body], [headers])
                assert codes == [200]
                out[name].append(answer)
                continue
            ctx, [result] = run_batch(handler, [body], [headers])
            assert ctx.get_response_status(0)[0] == 200, result
            out[name].append(json.loads(result))
    return out


@pytest.fixture(scope="module")
def post(server):
    url = server.config().inference_url
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=BATCH))

    def send(model, item):
        body, headers = item
        key = json.loads(server.key_file.read_text())["inference"]["key"]
        path = "/v2/models/" + model + "/infer" if V2_HEADER in headers else "/predictions/" + model
        return session.post(url + path, data=body, timeout=120, headers={"Authorization": f"Bearer {key}", **headers})

    with ThreadPoolExecutor(BATCH) as pool:
        yield lambda model, items: list(pool.map(lambda item: send(model, item), items))


# ---------------------------------------------------------------- checks


def close(a, b):
    """Answers equal up to float noise from the batch size."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) < 1e-4
    return a == b


def same_answer(name: str, resp: requests.Response, want) -> bool:
    if name == "textgen":
        return resp.text == want
    got = resp.json()
    if isinstance(want, dict) and "outputs" in want:  # v2: the model's name and version differ in-process
        got = {k: v for k, v in got.items() if k not in ("model_name", "model_version")}
        want = {k: v for k, v in want.items() if k not in ("model_name", "model_version")}
    return close(got, want)


class Tally:
    def __init__(self):
        self.bad = self.bad_4xx = self.good = self.good_ok = self.five_xx = 0
        self.rounds = self.full_batches = 0

    def round(self, name, items, resps, goods_at, expected_answers, labels):
        """Check one round (one batch): bad items 4xx with a JSON error, good items equal to in-process."""
        self.rounds += 1
        sizes = {r.headers.get("X-Batch-Size") for r in resps}
        if sizes == {str(BATCH)}:
            self.full_batches += 1
        for i, resp in enumerate(resps):
            assert resp.status_code < 500, (name, labels[i], resp.status_code, resp.text[:300])
            if i in goods_at:
                self.good += 1
                assert resp.status_code == 200, (name, labels[i], resp.status_code, resp.text[:300])
                assert same_answer(name, resp, expected_answers[goods_at[i]]), (name, labels[i], resp.text[:300])
                self.good_ok += 1
                continue
            self.bad += 1
            assert 400 <= resp.status_code < 500, (name, labels[i], resp.status_code, resp.text[:300])
            error = resp.json()
            assert {"code", "type", "message"} <= error.keys() and error["code"] == resp.status_code, error
            assert error["message"] and len(resp.content) < 2000, (labels[i], resp.content[:300])
            if items[i][1].get(V2_HEADER):
                assert error["error"] == error["message"] and V2_HEADER not in resp.headers
            self.bad_4xx += 1


def rounds_of(bad: list, goods: list, start: int):
    """Rounds of BAD_PER_ROUND bad items and GOOD_PER_ROUND good ones, the good ones at varying places."""
    for r in range(0, len(bad), BAD_PER_ROUND):
        items, labels, goods_at = list(bad[r : r + BAD_PER_ROUND]), [], {}
        labels = [b[0] for b in items]
        items = [(b[1], b[2]) for b in items]
        for g in range(BATCH - len(items)):
            which = (start + r + g) % len(goods)
            at = (start + r * 3 + g * 5) % (len(items) + 1)
            items.insert(at, goods[which])
            labels.insert(at, f"good #{which}")
        goods_at = {i: int(label.split("#")[1]) for i, label in enumerate(labels) if label.startswith("good #")}
        yield items, labels, goods_at


@pytest.mark.parametrize("name", MODELS)
def test_attacks_in_a_batch_get_4xx_and_their_batch_mates_the_in_process_answer(
    name, fuzz_models, expected, post, client
):
    tally = Tally()
    for items, labels, goods_at in rounds_of(attacks(name), GOODS[name], 0):
        tally.round(name, items, post(f"fuzz-{name}", items), goods_at, expected[name], labels)
    assert tally.bad == len(attacks(name)) == tally.bad_4xx and tally.good_ok == tally.good
    assert tally.full_batches >= 1  # bad and good items shared a batch of 8
    assert client.ping() == "Healthy"


@pytest.mark.parametrize("name", MODELS)
def test_malformed_requests_never_reach_a_5xx(name, fuzz_models, expected, post, client):
    tally = Tally()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(malformed(name), min_size=BAD_PER_ROUND, max_size=BAD_PER_ROUND), st.integers(0, 1000))
    def check(bodies, start):
        bad = [(f"drawn {body[:60]!r}", body, JSON) for body in bodies]
        for items, labels, goods_at in rounds_of(bad, GOODS[name], start):
            tally.round(name, items, post(f"fuzz-{name}", items), goods_at, expected[name], labels)

    check()
    assert tally.bad >= 1000 and tally.bad_4xx == tally.bad and tally.good_ok == tally.good >= 300
    assert tally.full_batches >= tally.rounds // 2, (tally.full_batches, tally.rounds)  # they really batched
    assert client.ping() == "Healthy"
    assert client.describe(f"fuzz-{name}")[0].ready_workers == 1


def test_a_stock_tritonclient_reads_every_v2_error(server, fuzz_models, post):
    """Errors for binary-extension requests are plain JSON with the protocol's `error` field."""
    th = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    key = json.loads(server.key_file.read_text())["inference"]["key"]
    c = th.InferenceServerClient(server.config().inference_url.split("://")[1])
    x = np.zeros((2, 99), dtype=np.float32)
    for binary in (True, False):
        bad = th.InferInput("input-0", [2, 99], "FP32")
        bad.set_data_from_numpy(x, binary_data=binary)
        with pytest.raises(InferenceServerException) as caught:
            c.infer("fuzz-mlp", [bad], headers={"Authorization": "Bearer " + key})
        assert caught.value.status() == "400" and "shape [2, 99]" in caught.value.message()
    [resp] = post("fuzz-mlp", [(_HUGE_V2_BINARY + b"\0" * 400, {V2_HEADER: str(len(_HUGE_V2_BINARY))})])
    assert resp.status_code == 400 and "1,099,511,627,776 values" in resp.json()["error"]


def test_oversize_bodies_get_413_and_nothing_breaks(post, fuzz_models, client):
    huge = b'{"text": "' + b"a" * 7_000_000 + b'"}'  # over the frontend's max_request_size: its empty 413
    over_model = as_body({"user_id": "u" * 100_000})  # over the recommender's 64 KiB: the handler's JSON 413
    resps = post("fuzz-sentiment", [(huge, JSON), (GOOD["sentiment"], JSON)])
    assert [r.status_code for r in resps] == [413, 200]
    [resp] = post("fuzz-recommender", [(over_model, JSON)])
    assert resp.status_code == 413 and "at most 65,536" in resp.json()["message"]
    # through the client: the frontend's limit is known from the config, so nothing is sent
    with pytest.raises(
        E.PayloadTooLarge,
        match=r"7,000,012 bytes\) is over the server's max_request_size "
        r"\(6,553,500 bytes\).*\(not sent\)",
    ):
        client.predict("fuzz-sentiment", huge)
    # and a client that does not know it still says what the frontend's empty 413 means
    client.max_request_size, known = None, client.max_request_size
    try:
        with pytest.raises(E.PayloadTooLarge, match=r"the request body \(7,000,012 bytes\) is over the server's"):
            client.predict("fuzz-sentiment", huge)
    finally:
        client.max_request_size = known
    with pytest.raises(E.PayloadTooLarge, match="at most 65,536"):
        client.predict("fuzz-recommender", over_model)
    assert client.ping() == "Healthy"
