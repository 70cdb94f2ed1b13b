"""The sentiment, fashion and recommender handlers with a hand-built context: answers equal the
trained model's, and every bad item gets its own 400 while the rest of its batch is answered."""

import io
import json

import numpy as np
import pytest
import torch
import torchship_models
from PIL import Image

from tests.conftest import load_handler
from torchship.archiver import EXAMPLES
from torchship.train.data import load_fashion

from .handler_context import make_context, statuses


def run(handler, bodies):
    ctx = make_context(handler.model_dir, batch=len(bodies))
    results = handler.handle([{"body": b} for b in bodies], ctx)
    return statuses(ctx, len(bodies)), [json.loads(r) for r in results]


def reference(run_dir, kind):
    from safetensors.torch import load_file

    meta = json.loads((run_dir / "meta.json").read_text())
    model = torchship_models.build(kind, meta["model"]["architecture"])
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.eval()


# ---------------------------------------------------------------- sentiment


@pytest.fixture(scope="module")
def sentiment(sentiment_run, tmp_path_factory):
    return load_handler(sentiment_run, "sentiment_handler", "SentimentHandler", tmp_path_factory)


def test_sentiment_drift_signals_of_one_text_are_the_bytes_of_the_general_path(sentiment):
    import torchship_capture
    import torchship_signals

    texts = ["A gripping, funny film.", "Ünïcödé wörds, naïve café", "!!! ...", "word " * 900, "x"]
    for text in texts:
        signals = sentiment.signals(sentiment.parse({"text": text}))
        general = torchship_signals.sentiment([torchship_signals.text(torchship_signals.words(text), sentiment.tokens)])
        assert signals == torchship_capture.signals_json(general), text  # the same bytes in the record
    many = sentiment.signals(sentiment.parse({"texts": texts[:2]}))
    assert many["tokens"] == [4, 4] and len(many["oov"]) == 2  # a request of several texts: the dict


def test_sentiment_answers_and_per_item_errors(sentiment):
    bodies = [
        {"text": "a gripping, funny and moving film"},
        {"text": ""},
        {"text": 42},
        {"text": "a dull, lifeless, tedious mess"},
        {"nope": "x"},
        {"text": "x" * 5001},
        b"{broken",
    ]
    codes, answers = run(sentiment, bodies)
    assert codes == [200, 400, 400, 200, 400, 400, 400]
    assert answers[0]["label"] == "positive" and answers[3]["label"] == "negative"
    assert abs(sum(answers[0]["probabilities"].values()) - 1) < 1e-4
    assert "empty" in answers[1]["message"] and "must be a string" in answers[2]["message"]
    assert "at most 5000" in answers[5]["message"] and "missing field 'text'" in answers[4]["message"]


def test_sentiment_batch_equals_one_by_one(sentiment):
    texts = ["the best film of the year", "not funny at all", "unknownword zzzz", "a film"]
    batch = run(sentiment, [{"text": t} for t in texts])[1]
    alone = [run(sentiment, [{"text": t}])[1][0] for t in texts]
    for a, b in zip(batch, alone):
        assert a["label"] == b["label"]
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)


def test_sentiment_texts_list_answers_each_in_order(sentiment):
    texts = ["the best film of the year", "not funny at all", "a film"]
    codes, answers = run(
        sentiment,
        [
            {"texts": texts},
            {"text": texts[1]},
            {"texts": ["fine", ""]},
            {"texts": []},
            {"texts": ["x"] * 257},
            {"texts": "not a list"},
        ],
    )
    assert codes == [200, 200, 400, 400, 400, 400]
    alone = [run(sentiment, [{"text": t}])[1][0] for t in texts]
    assert [a["label"] for a in answers[0]] == [a["label"] for a in alone]
    for a, b in zip(answers[0], alone):
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)
    assert answers[1] == alone[1]  # a single text still gets a single answer, not a list
    assert "'texts'[1] is empty" in answers[2]["message"]
    assert all("list of 1 to 256 strings" in a["message"] for a in answers[3:])


# ---------------------------------------------------------------- fashion


@pytest.fixture(scope="module")
def fashion(fashion_run, tmp_path_factory):
    return load_handler(fashion_run, "fashion_handler", "FashionHandler", tmp_path_factory)


@pytest.fixture(scope="module")
def test_images():
    _, _, x, y = load_fashion()
    return x[:8], y[:8]


def png(array, mode="L", size=None, fmt="PNG"):
    img = Image.fromarray(array).convert(mode)
    if size:
        img = img.resize(size)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_fashion_json_and_image_bodies_agree_with_the_model(fashion, fashion_run, test_images):
    x, y = test_images
    model = reference(fashion_run, "fashion")
    with torch.inference_mode():
        expected = model(torch.from_numpy(x.astype(np.float32) / 255)[:, None]).argmax(1).tolist()
    codes, answers = run(fashion, [{"image": img.tolist(), "k": 3} for img in x])
    assert codes == [200] * 8 and [a["class_id"] for a in answers] == expected
    assert all(len(a["predictions"]) == 3 and a["predictions"][0]["label"] == a["label"] for a in answers)
    codes, from_png = run(fashion, [png(img) for img in x])
    assert codes == [200] * 8 and [a["class_id"] for a in from_png] == expected


def test_fashion_any_size_and_mode(fashion, test_images):
    x, _ = test_images
    bodies = [png(x[0], "RGB", (100, 80), "JPEG"), png(x[0], "RGBA", (56, 56)), png(x[0], "1")]
    codes, answers = run(fashion, bodies)
    assert codes == [200, 200, 200] and all("label" in a for a in answers)


def test_fashion_bad_items_get_400_and_the_rest_are_answered(fashion, test_images):
    x, _ = test_images
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, format="PNG")  # over twice PIL's own limit: PIL refuses to open it
    big = io.BytesIO()
    Image.new("L", (2100, 2100)).save(big, format="PNG")  # over the limit: refused from its header
    bodies = [
        png(x[0]),
        b"\x89PNG\r\n\x1a\nbroken",
        b"GIF8garbage",
        b"\x00\x01random",
        {"image": [[1, 2], [3]]},
        {"image": x[0].tolist(), "k": 0},
        {"image": (x[0] * 1000.0).tolist()},
        bomb.getvalue(),
        big.getvalue(),
        {"image": x[1].tolist()},
    ]
    codes, answers = run(fashion, bodies)
    assert codes == [200, 400, 400, 400, 400, 400, 400, 400, 400, 200]
    assert "2100x2100 pixels: at most 4,194,304" in answers[8]["message"]
    assert "cannot read the image" in answers[1]["message"]
    assert "neither JSON nor a PNG/JPEG" in answers[3]["message"]
    assert "'k' must be" in answers[5]["message"] and "0 to 255" in answers[6]["message"]


# ---------------------------------------------------------------- recommender


@pytest.fixture(scope="module")
def recommender(recommender_run, tmp_path_factory):
    return load_handler(recommender_run, "recommender_handler", "RecommenderHandler", tmp_path_factory)


def test_recommender_top_k_matches_the_model_and_excludes_seen(recommender, recommender_run):
    catalog = json.loads((recommender_run / "catalog.json").read_text())
    model = reference(recommender_run, "recommender")
    codes, [answer, with_seen] = run(
        recommender, [{"user_id": "196", "k": 5}, {"user_id": 196, "k": 5, "exclude_seen": False}]
    )
    assert codes == [200, 200] and answer["fallback"] is None and len(answer["items"]) == 5
    u = catalog["users"].index("196")
    with torch.no_grad():
        scores = model(torch.tensor([u]))[0]
    scores[catalog["seen"][u]] = float("-inf")
    assert answer["item_ids"] == [catalog["items"][i] for i in torch.topk(scores, 5).indices.tolist()]
    seen_ids = {catalog["items"][i] for i in catalog["seen"][u]}
    assert not seen_ids & set(answer["item_ids"])
    assert all(it["title"] and it["title"] != it["item_id"] for it in answer["items"])
    assert with_seen["item_ids"] != answer["item_ids"]


def test_recommender_drift_signals_worked_out_ahead_are_those_of_the_catalog(recommender, recommender_run):
    import torchship_signals

    catalog = json.loads((recommender_run / "catalog.json").read_text())
    for n in (0, 1, len(catalog["users"]) // 2, len(catalog["users"]) - 1):
        seen = catalog["seen"][n]
        expected = torchship_signals.recommender(
            len(seen), torchship_signals.mean_log_popularity(seen, catalog["popularity"])
        )
        parsed = recommender.parse({"user_id": catalog["users"][n]})
        signals = recommender.signals(parsed)
        assert json.loads(signals) == expected and expected["unknown_user"] == [0]
        assert recommender.signals(parsed) is signals  # worked out once per user
    unknown = recommender.signals(recommender.parse({"user_id": "no-such-user"}))
    assert json.loads(unknown) == torchship_signals.recommender(None, None) == {"unknown_user": [1]}


def test_recommender_unknown_user_gets_popular_items_flagged(recommender):
    codes, [answer] = run(recommender, [{"user_id": "no-such-user", "k": 3}])
    assert codes == [200] and answer["fallback"] == "popular" and len(answer["item_ids"]) == 3


@pytest.mark.parametrize(
    "body, message",
    [
        ({"user_id": "196", "k": 0}, "'k' must be an integer from 1 to 100"),
        ({"user_id": "196", "k": 101}, "from 1 to 100"),
        ({"user_id": "196", "k": "10"}, "from 1 to 100"),
        ({"user_id": "196", "k": True}, "from 1 to 100"),
        ({"k": 3}, "missing field 'user_id'"),
        ({"user_id": None}, "non-empty string"),
        ({"user_id": "196", "exclude_seen": "yes"}, "true or false"),
    ],
)
def test_recommender_bad_items(recommender, body, message):
    codes, answers = run(recommender, [{"user_id": "1", "k": 2}, body])
    assert codes == [200, 400] and message in answers[1]["message"]


# ---------------------------------------------------------------- embedder


@pytest.fixture(scope="module")
def embedder(embedder_run, tmp_path_factory):
    return load_handler(embedder_run, "embedder_handler", "EmbedderHandler", tmp_path_factory)


def test_embedder_reference_pair_and_per_item_errors(embedder):
    pair = ["A man is eating food.", "A man is eating a piece of bread."]
    codes, answers = run(
        embedder,
        [
            {"texts": pair},
            {"texts": []},
            {"texts": ["ok", 5]},
            {"query": "A man is eating food.", "candidates": [pair[1], "A man rides a horse."]},
            {"texts": ["x" * 2001]},
            {"texts": ["a"] * 65},
            {"other": 1},
        ],
    )
    assert codes == [200, 400, 400, 200, 400, 400, 400]
    a, b = np.array(answers[0]["embeddings"])
    assert a.shape == (384,) and abs(np.linalg.norm(a) - 1) < 1e-4
    assert 0.70 <= float(a @ b) <= 0.80  # the published model's behaviour (about 0.75)
    ranked = answers[3]["ranked"]
    assert ranked[0]["index"] == 0 and ranked[0]["score"] == pytest.approx(float(a @ b), abs=1e-4)


def test_embedder_batches_across_and_within_requests(embedder):
    texts = ["short", "a somewhat longer sentence about films", "the third one"]
    together = run(embedder, [{"texts": texts}])[1][0]["embeddings"]
    across = [run(embedder, [{"texts": [t]} for t in texts])[1][i]["embeddings"][0] for i in range(3)]
    alone = [run(embedder, [{"texts": [t]}])[1][0]["embeddings"][0] for t in texts]
    assert np.allclose(together, alone, atol=1e-5) and np.allclose(across, alone, atol=1e-5)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_handler_has_the_one_class_torchserve_wants(name):
    """TorchServe loads a handler file's classes and refuses a file with more than one
    ("Expected only one class in custom service code"): a helper class goes in a shared module."""
    import importlib

    from ts.utils.util import list_classes_from_module

    handler = EXAMPLES[name].handler
    assert len(list_classes_from_module(importlib.import_module(handler[:-3]))) == 1
