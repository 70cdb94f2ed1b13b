"""The three application examples on a real TorchServe: quality on golden sets through the HTTP
API, and per-item errors in mixed concurrent traffic."""

import io
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from torchship import errors as E
from torchship.ops.rollout import evaluate, load_golden

from .conftest import ROOT, deploy_example

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployed(client, store, public_key, example_archives, sentiment_run, fashion_run, recommender_run):
    runs = {"sentiment": sentiment_run, "fashion": fashion_run, "recommender": recommender_run}
    for name in runs:
        deploy_example(client, store, name, public_key)
    yield runs
    for name in runs:
        client.unregister(name, "1.0")


def golden(name):
    return load_golden(ROOT / "tests" / "golden" / f"{name}.jsonl")


@pytest.mark.parametrize("name, bar", [("sentiment", 0.75), ("fashion", 0.85)])
def test_quality_on_the_golden_set_over_http(client, deployed, name, bar):
    accuracy, answers = evaluate(client, name, "1.0", golden(name), concurrency=4)
    assert accuracy >= bar, f"{name} golden accuracy {accuracy}"
    assert all(isinstance(a, dict) for a in answers)


def test_recommender_quality_and_baseline(client, deployed):
    meta = json.loads((deployed["recommender"] / "meta.json").read_text())
    assert meta["metrics"]["hit_rate_at_10"] >= 0.55
    assert meta["metrics"]["hit_rate_at_10"] > meta["metrics"]["popularity_hit_rate_at_10"]
    # served: the held-out item among the top 10 of all ~1,600 unseen items, for a share of users
    hit, answers = evaluate(client, "recommender", "1.0", golden("recommender"), concurrency=4)
    assert hit >= 0.05 and all(a["fallback"] is None for a in answers)


def post_all(server, name, bodies, content_types):
    url = server.config().inference_url + f"/predictions/{name}"
    key = json.loads(server.key_file.read_text())["inference"]["key"]

    def one(args):
        body, ctype = args
        return requests.post(
            url, data=body, headers={"Authorization": f"Bearer {key}", "Content-Type": ctype}, timeout=30
        )

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, zip(bodies, content_types)))


def image_bytes(mode, size, fmt):
    buf = io.BytesIO()
    Image.new(mode, size, color=128 if mode == "L" else (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


MIXED = {
    "sentiment": [
        (b'{"text": "a wonderful, warm film"}', 200),
        (b'{"text": ""}', 400),
        (b'{"text": 5}', 400),
        (b'{"text": "boring"}', 200),
        (b"not json", 400),
        (b'{"text": "fine"}', 200),
    ],
    "fashion": [
        (image_bytes("RGB", (300, 200), "JPEG"), 200),
        (b"\x89PNG\r\n\x1a\ncorrupt", 400),
        (image_bytes("L", (28, 28), "PNG"), 200),
        (b'{"image": [[0]]}', 400),
        (json.dumps({"image": [[0] * 28] * 28, "k": 2}).encode(), 200),
        (b"\xff\xd8\xffjunk", 400),
    ],
    "recommender": [
        (b'{"user_id": "196", "k": 5}', 200),
        (b'{"user_id": "196", "k": 0}', 400),
        (b'{"user_id": "stranger"}', 200),
        (b'{"k": 3}', 400),
        (b'{"user_id": 1, "k": 3}', 200),
        (b'{"user_id": "1", "k": "x"}', 400),
    ],
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_concurrent_traffic_gets_per_item_answers(server, client, deployed, name):
    cases = MIXED[name] * 3
    types = ["application/json" if b[:1] in (b"{", b"n") else "application/octet-stream" for b, _ in cases]
    resps = post_all(server, name, [b for b, _ in cases], types)
    assert [r.status_code for r in resps] == [code for _, code in cases]
    for r, (_, code) in zip(resps, cases):
        body = r.json()
        if code == 400:
            assert body["code"] == 400 and body["message"]
    assert client.ping() == "Healthy"


def test_fashion_v2_and_bad_k(client, deployed):
    import numpy as np

    from torchship.train.data import load_fashion

    _, _, x, y = load_fashion()
    answer = client.infer_v2("fashion", {"images": x[:4].astype(np.float32)})
    classes = {o["name"]: o for o in answer["outputs"]}["class_id"]["data"].tolist()
    assert sum(c == t for c, t in zip(classes, y[:4].tolist())) >= 3
    with pytest.raises(E.BadRequest, match="'k' must be"):
        client.predict("fashion", {"image": x[0].tolist(), "k": 99})
