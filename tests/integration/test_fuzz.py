"""At least 1,000 malformed requests per handler, mixed into batches with a good item: every bad
item gets a 4xx with a message, every good item its right answer, never a 5xx, and the server
stays healthy."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchship.testing import GOOD, malformed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 8  # 7 malformed requests and 1 good one, sent together so the server batches them
EXAMPLES = 143  # x 7 malformed = 1,001 per model


@pytest.fixture(scope="module")
def fuzz_models(client, example_archives):
    """Each example registered as fuzz-<name> with batches of 8 gathered for up to 50 ms."""
    for name, archive in example_archives.items():
        client.register(archive.name, model_name=f"fuzz-{name}", initial_workers=1, batch_size=BATCH,
                        max_batch_delay=50)
    yield {name: client.predict(f"fuzz-{name}", json.loads(GOOD[name])) for name in example_archives}
    for name in example_archives:
        client.unregister(f"fuzz-{name}")


@pytest.fixture(scope="module")
def post(server):
    url = server.config().inference_url + "/predictions/"
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=BATCH))

    def send(model, body):
        key = json.loads(server.key_file.read_text())["inference"]["key"]
        return session.post(url + model, data=body, timeout=60,
                            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})

    with ThreadPoolExecutor(BATCH) as pool:
        yield lambda model, bodies: list(pool.map(lambda b: send(model, b), bodies))


def close(a, b):
    """Answers equal up to float noise from the batch size."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) < 1e-4
    return a == b


@pytest.mark.parametrize("name", ["mlp", "sentiment", "fashion", "recommender"])
def test_malformed_requests_never_reach_a_5xx(name, fuzz_models, post, client):
    expected_good = fuzz_models[name]
    tally = {"bad": 0, "4xx": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(malformed(name), min_size=BATCH - 1, max_size=BATCH - 1), st.integers(0, BATCH - 1))
    def check(bad_bodies, good_at):
        bodies = list(bad_bodies)
        bodies.insert(good_at, GOOD[name])
        resps = post(f"fuzz-{name}", bodies)
        for i, (body, resp) in enumerate(zip(bodies, resps)):
            if i == good_at:
                assert resp.status_code == 200, (resp.status_code, resp.text[:200])
                assert close(resp.json(), expected_good)
                continue
            tally["bad"] += 1
            assert 400 <= resp.status_code < 500, (body[:120], resp.status_code, resp.text[:200])
            tally["4xx"] += 1
            if resp.status_code == 400:
                assert resp.json()["message"], body[:120]

    check()
    assert tally["bad"] >= 1000 and tally["4xx"] == tally["bad"]
    assert client.ping() == "Healthy"
    assert client.describe(f"fuzz-{name}")[0].ready_workers == 1


def test_oversize_bodies_get_413_and_nothing_breaks(post, fuzz_models, client):
    huge = b'{"text": "' + b"a" * 7_000_000 + b'"}'
    resps = post("fuzz-sentiment", [huge, GOOD["sentiment"]])
    assert [r.status_code for r in resps] == [413, 200]
    assert client.ping() == "Healthy"
