"""Drift (handlers/torchship_signals.py, torchship.ops.drift): each example model's handler records the
signals its training described on held-out data; traffic like the held-out data is calm, shifted traffic
(scaled features, other-domain text, inverted images, unknown users) is flagged by the signals it moves."""

from __future__ import annotations

import inspect
import json
import zipfile

import numpy as np
import pytest
import torchship_base_handler
import torchship_capture
import torchship_oip
import torchship_signals

from tests.unit.handler_context import make_context, run_batch
from torchship.ops import capture as ops
from torchship.ops import drift as drift_ops
from torchship.sdk.errors import BadInput

N = 240  # requests per window: over drift's least (200)


def archive_of(run, tmp_path):
    """An archive as drift reads it: the run's meta.json packed at the top, and its vocab.json where it
    has one (sentiment's signals are derived from the recorded text with it; the rest is never read)."""
    path = tmp_path / "model.mar"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(run / "meta.json", "meta.json")
        if (run / "vocab.json").is_file():
            zf.write(run / "vocab.json", "vocab.json")
    return path


def serve(handler, name, bodies, tmp_path, version):
    """Every body through the handler with capture at 1.0; the drift report of what it captured."""
    root = tmp_path / "capture"
    ops.write_settings(root, name, version, sample=1.0)
    handler.capture = torchship_capture.Capture(root, name, version)
    for start in range(0, len(bodies), 8):
        _, results = run_batch(handler, bodies[start : start + 8])
    return root


def report(handler, run, name, bodies, tmp_path, version):
    root = serve(handler, name, bodies, tmp_path, version)
    return drift_ops.drift(root, archive_of(run, tmp_path), name, version, window=N)


def verdicts(rep):
    return {s.signal: s.verdict for s in rep.signals}


@pytest.fixture(autouse=True)
def _settings_every_batch(monkeypatch):
    monkeypatch.setattr(torchship_capture, "CHECK_EVERY_S", 0.0)


def test_mlp_held_out_rows_are_calm_and_scaled_rows_drift(mlp_run, tmp_path_factory, tmp_path):
    from tests.conftest import load_handler
    from torchship.train import held_out

    handler = load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)
    rows = held_out("mlp", mlp_run).inputs(N)[0].numpy()
    calm = report(handler, mlp_run, "mlp", [json.dumps({"data": r.tolist()}) for r in rows], tmp_path, "1.0")
    assert not calm.drift, calm.drifted
    assert len(calm.signals) == 103 and calm.records == N  # x0..x99, rms, pred_class, pred_score
    record = ops.records(tmp_path / "capture", "mlp", "1.0")[0]
    # the features are recorded once, as the input: drift derives the signals the handler would give
    assert record["signals"] == "input"
    derived = torchship_signals.from_input("mlp", record["input"])
    assert derived == handler.signals(handler.parse(record["input"])) and len(derived["x0"]) == 1

    shifted = report(handler, mlp_run, "mlp", [json.dumps({"data": (3 * r).tolist()}) for r in rows], tmp_path, "2.0")
    assert shifted.drift
    v = verdicts(shifted)
    assert v["rms"] == "drift" and v["pred_score"] == "drift"  # a larger input, a more confident model
    assert sum(v[f"x{i}"] == "drift" for i in range(100)) >= 90
    rms = next(s for s in shifted.signals if s.signal == "rms")
    assert rms.test == "KS" and rms.statistic >= 0.85 and rms.threshold >= 0.1


def test_the_workers_drift_metric_is_measured_in_a_process_of_its_own(mlp_run, tmp_path_factory, tmp_path, monkeypatch):
    """The metric's comparison runs in a child process, so its CPU never holds the worker's GIL (a
    lone caller's p99 went to 30-120 ms with it in a thread): the same figures as in the worker, the
    model keys not handed down, and a child that fails says why."""
    import torchship_drift

    from tests.conftest import load_handler
    from torchship.train import held_out

    handler = load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)
    rows = held_out("mlp", mlp_run).inputs(N)[0].numpy()
    bodies = [json.dumps({"data": (3 * r).tolist()}) for r in rows]
    root = serve(handler, "mlp", bodies, tmp_path, "1.0")
    gauge = torchship_drift.DriftGauge(root / "mlp" / "1.0", handler.meta["reference"], "mlp", "1.0")
    here = gauge.measure(500)
    assert here is not None and here[0] == 1 and here[2] == N
    monkeypatch.setenv("TORCHSHIP_MODEL_KEYS", "secret-keys")
    spy = tmp_path / "env.txt"
    monkeypatch.setattr(
        torchship_drift,
        "_CHILD",
        f"import os; open({str(spy)!r}, 'w').write(os.environ.get('TORCHSHIP_MODEL_KEYS', 'none')); "
        + torchship_drift._CHILD,
    )
    assert gauge.measure_apart(500) == here
    assert spy.read_text() == "none"
    broken = torchship_drift.DriftGauge(root / "mlp" / "1.0", {"signals": "not a mapping"}, "mlp", "1.0")
    with pytest.raises(RuntimeError, match="the drift process exited with 1: .*Error"):
        broken.measure_apart(500)


def test_the_workers_drift_metric_reads_the_vocabulary_from_the_models_folder(
    sentiment_run, tmp_path_factory, tmp_path
):
    """The metric of a version whose signals drift derives with an archive file (sentiment's vocab.json)
    reads it from the worker's model folder, in the child process too; without the folder it has no
    records to judge."""
    import torchship_drift

    from tests.conftest import load_handler
    from torchship.train import sentiment

    handler = load_handler(sentiment_run, "sentiment_handler", "SentimentHandler", tmp_path_factory)
    _, texts, _, _, test_idx = sentiment.corpus()
    root = serve(handler, "sentiment", [json.dumps({"text": texts[i]}) for i in test_idx[:N]], tmp_path, "1.0")
    folder, reference = root / "sentiment" / "1.0", handler.meta["reference"]
    gauge = torchship_drift.DriftGauge(folder, reference, "sentiment", "1.0", handler.model_dir)
    here = gauge.measure(500)
    assert here is not None and here[0] == 0 and here[2] == N
    assert gauge.measure_apart(500) == here
    assert torchship_drift.DriftGauge(folder, reference, "sentiment", "1.0").measure(500) is None


@pytest.mark.parametrize(
    "recorded",
    [
        {"data": [[1.0, 2.0], [3.0, 4.0]]},
        {"npy": [2, 2], "data": [[1.0, 2.0], [3.0, 4.0]]},  # a binary .npy body, as the capture records it
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]},
    ],
)
def test_mlp_signals_come_from_every_input_form_the_handler_takes(recorded):
    assert torchship_signals.from_input("mlp", recorded) == torchship_signals.mlp(np.array([[1.0, 2.0], [3.0, 4.0]]))


@pytest.mark.parametrize(
    "recorded", [{"data": "hmac:0123456789abcdef"}, {"data": [[1, 2], [3]]}, {"inputs": []}, [1, 2], None]
)
def test_an_mlp_input_drift_cannot_read_has_no_signals(recorded):
    assert torchship_signals.from_input("mlp", recorded) is None
    assert drift_ops.live_values("mlp", [{"status": 200, "signals": "input", "input": recorded}]) == ({}, 0)


def test_sentiment_held_out_text_is_calm_and_other_domain_text_drifts(sentiment_run, tmp_path_factory, tmp_path):
    from tests.conftest import load_handler
    from torchship.train import sentiment

    handler = load_handler(sentiment_run, "sentiment_handler", "SentimentHandler", tmp_path_factory)
    _, texts, _, _, test_idx = sentiment.corpus()
    calm = report(
        handler, sentiment_run, "sentiment", [json.dumps({"text": texts[i]}) for i in test_idx[:N]], tmp_path, "1.0"
    )
    assert not calm.drift, calm.drifted
    # other-domain text: the standard library's documentation, cut to review-sized pieces
    words = " ".join(
        inspect.getdoc(o) or "" for m in (json, zipfile, inspect) for _, o in inspect.getmembers(m)
    ).split()
    docs = [" ".join(words[i : i + 20]) for i in range(0, 20 * N, 20)]
    shifted = report(handler, sentiment_run, "sentiment", [json.dumps({"text": t}) for t in docs], tmp_path, "2.0")
    assert shifted.drift and verdicts(shifted)["oov"] == "drift", shifted.to_dict()


def test_fashion_held_out_images_are_calm_and_inverted_images_drift(fashion_run, tmp_path_factory, tmp_path):
    from tests.conftest import load_handler
    from torchship.train.data import load_fashion

    handler = load_handler(fashion_run, "fashion_handler", "FashionHandler", tmp_path_factory)
    images = load_fashion()[2][:N]
    calm = report(handler, fashion_run, "fashion", [json.dumps({"image": i.tolist()}) for i in images], tmp_path, "1.0")
    assert not calm.drift, calm.drifted
    inverted = [json.dumps({"image": (255 - i).tolist()}) for i in images]
    shifted = report(handler, fashion_run, "fashion", inverted, tmp_path, "2.0")
    v = verdicts(shifted)
    assert shifted.drift and v["mean"] == v["dark"] == "drift"  # the spread stays: inverting keeps it


def captured_signals(handler, name, bodies, tmp_path, redact=None):
    """Each body through the handler with capture at 1.0 (fields redacted as `redact` says): per request,
    (its record, the signals the handler itself works out for it)."""
    root = tmp_path / "capture"
    ops.write_settings(root, name, "1.0", sample=1.0, redact=redact)
    handler.capture = torchship_capture.Capture(root, name, "1.0")
    run_batch(handler, bodies)
    records = ops.records(root, name, "1.0")
    own = []
    for b in bodies:  # parsed as the worker parses it (a v2 request: its inputs, typed as declared)
        payload, binary = handler.payload({"body": b}, {})
        is_v2 = torchship_oip.is_v2(payload)
        parsed = handler.parse_v2(torchship_oip.decode_inputs(payload, binary)) if is_v2 else handler.parse(payload)
        signals = handler.signals(parsed)
        own.append(json.loads(signals) if isinstance(signals, bytes) else signals)
    return records, own


def test_sentiment_signals_are_derived_from_the_recorded_text_with_the_archives_vocabulary(
    sentiment_run, tmp_path_factory, tmp_path
):
    """A captured sentiment request pays nothing for its drift signals: the record says "input", and drift
    works out what the handler would have, from the text recorded and the vocab.json packed in the archive."""
    from tests.conftest import load_handler

    handler = load_handler(sentiment_run, "sentiment_handler", "SentimentHandler", tmp_path_factory)
    bodies = [
        json.dumps({"text": "A gripping, funny film that never lets go"}),
        json.dumps({"text": "Привет, мир! zxqv blorf"}),  # another script, and words the vocabulary lacks
        json.dumps({"texts": [f"review number {i}: a dull, plodding mess" for i in range(20)]}),  # 8 of 20 picked
    ]
    records, own = captured_signals(handler, "sentiment", bodies, tmp_path)
    vocab = drift_ops.read_input_data(archive_of(sentiment_run, tmp_path), "sentiment")
    assert isinstance(vocab, frozenset) and len(vocab) > 1000
    assert [r["signals"] for r in records] == ["input"] * 3
    assert [torchship_signals.from_input("sentiment", r["input"], vocab) for r in records] == own
    assert len(own[2]["tokens"]) == torchship_signals.MAX_ITEMS and own[1]["oov"] == [1.0]
    # without the vocabulary (an archive without vocab.json) the records are left out, not guessed at
    assert torchship_signals.from_input("sentiment", records[0]["input"], None) is None
    assert drift_ops.live_values("sentiment", records, None) == ({}, 0)


def test_a_redacted_field_keeps_the_signals_in_the_record(sentiment_run, tmp_path_factory, tmp_path):
    """With the text hashed, drift could not read it: the worker works the signals out itself."""
    from tests.conftest import load_handler

    handler = load_handler(sentiment_run, "sentiment_handler", "SentimentHandler", tmp_path_factory)
    bodies = [json.dumps({"text": "a gripping, funny film", "user": "u1"}), json.dumps({"text": "dull"})]
    records, own = captured_signals(handler, "sentiment", bodies, tmp_path, redact={"text": "hash"})
    assert [r["input"]["text"][:5] for r in records] == ["hmac:"] * 2
    assert [r["signals"] for r in records] == own


def test_fashion_signals_are_derived_from_the_recorded_image(fashion_run, tmp_path_factory, tmp_path):
    """An image body is recorded as its bytes (base64, which replay sends again), and drift decodes it as
    the handler does; the same for the other forms the handler takes."""
    import base64
    import io

    from PIL import Image

    from tests.conftest import load_handler
    from torchship.train.data import load_fashion

    handler = load_handler(fashion_run, "fashion_handler", "FashionHandler", tmp_path_factory)
    images = load_fashion()[2][:3]
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(images[0]).save(png, format="PNG")
    Image.fromarray(images[1]).resize((56, 56)).convert("RGB").save(jpeg, format="JPEG")
    bodies = [
        png.getvalue(),
        jpeg.getvalue(),  # another size and mode: converted to 28x28 grey, as the handler does
        json.dumps({"image": images[2].tolist(), "k": 2}),
        json.dumps({"image": (images[:2] / 255.0).tolist()}),  # two images, scaled 0-1
    ]
    records, own = captured_signals(handler, "fashion", bodies, tmp_path)
    assert [r["status"] for r in records] == [200] * 4 and [r["signals"] for r in records] == ["input"] * 4
    assert base64.b64decode(records[0]["input"]["base64"]) == png.getvalue()
    assert ops.replay_inputs(records)[0] == png.getvalue()  # replay sends the image as it came
    assert [torchship_signals.from_input("fashion", r["input"]) for r in records] == own
    npy = {"npy": [1, 28, 28], "data": images[:1].tolist()}
    v2 = {"inputs": [{"name": "x", "shape": [28, 28], "datatype": "UINT8", "data": images[0].ravel().tolist()}]}
    assert torchship_signals.from_input("fashion", npy) == torchship_signals.from_input("fashion", v2) == own[0]
    for unreadable in ({"base64": "bm90IGFuIGltYWdl"}, {"image": [[1, 2]]}, {"image": "hmac:0123"}, [1], None):
        assert torchship_signals.from_input("fashion", unreadable) is None


def v2_body(values, datatype, shape=(28, 28), **beside):
    """A v2 request with one input tensor, and `beside` its inputs (decoy fields the handler ignores)."""
    return json.dumps({"inputs": [{"name": "x", "shape": list(shape), "datatype": datatype, "data": values}], **beside})


def test_v2_requests_are_read_as_the_worker_decodes_them(fashion_run, mlp_run, tmp_path_factory, tmp_path):
    """A v2 request is its inputs alone, typed as declared: a decoy field beside them is not what drift
    measures, and FP16 values just over 1 round to 1 as the model saw them."""
    from tests.conftest import load_handler

    fashion = load_handler(fashion_run, "fashion_handler", "FashionHandler", tmp_path_factory)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, 784).astype(float).tolist()
    bodies = [
        v2_body(image, "FP32", image=np.zeros((28, 28)).tolist()),  # a decoy "image" beside the inputs
        v2_body(image, "UINT8", image=int("9" * 400)),  # one no float can hold
        v2_body(np.r_[rng.random(783) * 0.5, 1.0004].tolist(), "FP16"),  # 1.0004 is 1.0 in FP16: a 0-1 image
    ]
    records, own = captured_signals(fashion, "fashion", bodies, tmp_path / "f")
    assert [r["status"] for r in records] == [200] * 3
    assert [torchship_signals.from_input("fashion", r["input"]) for r in records] == own
    mlp = load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)
    row = rng.random(100).tolist()
    decoy = v2_body(row, "FP32", (100,), data=[9e99] * 100)  # a decoy "data" beside the inputs
    records, own = captured_signals(mlp, "mlp", [decoy], tmp_path / "m")
    assert records[0]["status"] == 200 and torchship_signals.from_input("mlp", records[0]["input"]) == own[0]


@pytest.mark.parametrize(
    "kind, recorded",
    [
        ("fashion", {"image": [[int("9" * 400)] * 28] * 28}),
        ("fashion", {"npy": [28, 28], "data": [[int("9" * 400)] * 28] * 28}),
        ("fashion", {"npy": [float("inf")], "data": [1]}),
        ("fashion", {"inputs": [{"name": "x", "shape": [float("inf")], "datatype": "FP32", "data": [1]}]}),
        ("fashion", {"base64": "not base64!"}),
        ("fashion", {"image": [[1j]]}),
        ("mlp", {"data": [int("9" * 400)] * 100}),
        ("mlp", {"npy": [float("inf")], "data": [1]}),
        ("sentiment", {"texts": [1, 2]}),
        ("sentiment", {"text": None}),
    ],
)
def test_a_record_drift_cannot_read_is_left_out_and_never_raises(kind, recorded):
    """A record is anyone's to write (and holds what callers sent): one drift cannot read is skipped."""
    assert torchship_signals.from_input(kind, recorded, frozenset({"a"})) is None
    assert drift_ops.live_values(kind, [{"status": 200, "signals": "input", "input": recorded}], frozenset()) == ({}, 0)


def test_the_worker_keeps_the_signals_drift_could_not_read_cheaply(
    fashion_run, sentiment_run, tmp_path_factory, tmp_path
):
    """An input over the record's field bound is recorded by its size, and a large image would be decoded
    again at every measurement: the worker records their signals itself."""
    import io

    from PIL import Image

    from tests.conftest import load_handler

    fashion = load_handler(fashion_run, "fashion_handler", "FashionHandler", tmp_path_factory)
    small, large = io.BytesIO(), io.BytesIO()
    Image.new("L", (28, 28), 200).save(small, format="PNG")
    side = int(torchship_signals.DERIVED_MAX_PIXELS**0.5) + 1
    Image.new("L", (side, side), 200).save(large, format="PNG")  # a few hundred bytes, but many pixels
    records, own = captured_signals(fashion, "fashion", [small.getvalue(), large.getvalue()], tmp_path / "f")
    assert records[0]["signals"] == "input" and records[1]["signals"] == own[1]
    assert torchship_signals.from_input("fashion", records[1]["input"]) is None  # drift never decodes it
    sentiment = load_handler(sentiment_run, "sentiment_handler", "SentimentHandler", tmp_path_factory)
    many = json.dumps({"texts": ["a gripping, funny film " * 200] * 20})  # 90 KB: over the field bound
    records, own = captured_signals(sentiment, "sentiment", [many], tmp_path / "s")
    assert set(records[0]["input"]) == {"omitted_bytes"} and records[0]["signals"] == own[0]


def test_a_subclass_that_reads_input_its_own_way_keeps_its_own_signals(fashion_run, tmp_path_factory, tmp_path):
    """Built on the fashion handler, a handler that inverts images in parse (dark clothes on white) must not
    have drift read the raw image: its records carry its own signals."""
    import io

    from PIL import Image

    from tests.conftest import load_handler

    loaded = load_handler(fashion_run, "fashion_handler", "FashionHandler", tmp_path_factory)
    base = type(loaded)

    class Inverting(base):  # type: ignore[misc, valid-type]
        def parse(self, payload):
            images, k = super().parse(payload)
            return 1.0 - images, k

    class Declared(Inverting):  # a subclass that says its input is still read the example's way
        signals_from_input = True

    assert torchship_base_handler.signals_read_from_input(base)
    assert not torchship_base_handler.signals_read_from_input(Inverting)
    assert torchship_base_handler.signals_read_from_input(Declared)
    handler = Inverting()
    handler.initialize(make_context(loaded.model_dir))
    png = io.BytesIO()
    Image.new("L", (28, 28), 230).save(png, format="PNG")
    records, own = captured_signals(handler, "fashion", [png.getvalue()], tmp_path)
    assert records[0]["signals"] == own[0] and own[0]["dark"] == [1.0]  # inverted: all dark, as the model saw it


def test_recommender_known_users_are_calm_and_unknown_users_drift(recommender_run, tmp_path_factory, tmp_path):
    from tests.conftest import load_handler

    handler = load_handler(recommender_run, "recommender_handler", "RecommenderHandler", tmp_path_factory)
    users = json.loads((recommender_run / "catalog.json").read_text())["users"]
    picked = np.random.default_rng(0).choice(len(users), N, replace=False)
    calm = report(
        handler, recommender_run, "recommender", [json.dumps({"user_id": users[i]}) for i in picked], tmp_path, "1.0"
    )
    assert not calm.drift, calm.drifted
    assert set(verdicts(calm)) == {"unknown_user", "user_activity", "item_popularity", "top_score"}
    strangers = [json.dumps({"user_id": f"new-{i}"}) for i in range(N)]
    shifted = report(handler, recommender_run, "recommender", strangers, tmp_path, "2.0")
    v = verdicts(shifted)
    assert shifted.drift and v["unknown_user"] == "drift"
    assert v["top_score"] == "too few"  # unknown users get the popular items, not scores
    unknown = next(s for s in shifted.signals if s.signal == "unknown_user")
    assert unknown.test == "PSI" and unknown.statistic > 1 and unknown.threshold == 0.2


def test_too_few_requests_say_how_many_are_needed(mlp_run, tmp_path_factory, tmp_path):
    from tests.conftest import load_handler

    handler = load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)
    root = serve(handler, "mlp", [json.dumps({"data": [0.1] * 100})] * 20, tmp_path, "1.0")
    with pytest.raises(BadInput, match="20 captured request.* drift needs at least 200"):
        drift_ops.drift(root, archive_of(mlp_run, tmp_path), "mlp", "1.0")


def test_an_archive_without_a_reference_is_refused(tmp_path):
    path = tmp_path / "old.mar"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.json", json.dumps({"name": "mlp"}))
    with pytest.raises(BadInput, match="carries no drift reference"):
        drift_ops.read_reference(path)


def test_the_psi_and_ks_of_a_described_signal():
    rng = np.random.default_rng(1)
    ref = torchship_signals.describe(rng.standard_normal(4000).tolist(), categorical=False)
    assert len(ref["edges"]) == 9 and abs(sum(ref["proportions"]) - 1) < 1e-3
    same = drift_ops.compare_signal("x", ref, rng.standard_normal(500).tolist(), 1)
    moved = drift_ops.compare_signal("x", ref, (rng.standard_normal(500) + 0.5).tolist(), 1)
    assert same.verdict == "calm" and moved.verdict == "drift" and 0.15 < moved.statistic < 0.25
    cats = torchship_signals.describe(["a"] * 500 + ["b"] * 500, categorical=True)
    even = drift_ops.compare_signal("c", cats, ["a", "b"] * 150, 0)
    skewed = drift_ops.compare_signal("c", cats, ["a"] * 240 + ["b"] * 60 + ["z"] * 10, 0)
    assert even.verdict == "calm" and even.statistic < 0.01
    assert skewed.verdict == "drift" and skewed.bins[-1] == "(other)"


def test_the_plot_shows_reference_and_live(mlp_run, tmp_path_factory, tmp_path):
    from tests.conftest import load_handler
    from torchship.train import held_out

    handler = load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)
    rows = held_out("mlp", mlp_run).inputs(N)[0].numpy() * 2
    root = serve(handler, "mlp", [json.dumps({"data": r.tolist()}) for r in rows], tmp_path, "1.0")
    png = tmp_path / "drift.png"
    rep = drift_ops.drift(root, archive_of(mlp_run, tmp_path), "mlp", "1.0", window=N, plot_path=png)
    assert rep.plot == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep.to_dict()["drift"] is True and "rms" in rep.to_dict()["drifted"]


def test_text_in_another_script_is_all_unknown_words_not_none():
    # the model's tokenizer reads a-z and 0-9 only: the signals count words of any script
    assert torchship_signals.text(torchship_signals.words("Привет, мир! Это отзыв."), {"good"}) == (4, 1.0)
    assert torchship_signals.text(torchship_signals.words("A good film, don't miss it"), {"a", "good"}) == (6, 4 / 6)


def test_the_last_records_come_from_each_files_end(tmp_path):
    """read_records(last=N) reads each file from its end (a file is one worker's, in time order): the last N of
    two workers' interleaved files, a torn line skipped, the same as reading everything."""
    import os

    from torchship.handlers.torchship_drift import read_records

    a, b = tmp_path / "capture-a-1.jsonl", tmp_path / "capture-b-2.jsonl"
    a.write_text("".join(json.dumps({"time": t, "pad": "x" * 5000}) + "\n" for t in range(0, 200, 2)))
    b.write_text("".join(json.dumps({"time": t, "pad": "y" * 5000}) + "\n" for t in range(1, 200, 2)) + '{"time": 9')
    os.utime(a, (1e9, 1e9 + 1))
    (tmp_path / "capture-old-0.jsonl").write_text(json.dumps({"time": -5}) + "\n")  # written before both
    os.utime(tmp_path / "capture-old-0.jsonl", (1e9, 1e9))
    assert [r["time"] for r in read_records(tmp_path, last=5)] == [195, 196, 197, 198, 199]
    everything = read_records(tmp_path)
    assert len(everything) == 201 and everything[-7:] == read_records(tmp_path, last=7)


def test_mlp_is_measured_on_what_the_model_was_given(mlp_run, tmp_path_factory, tmp_path):
    """Drift reads mlp's recorded rows as the handler casts them (float32: a value rounds as the model saw
    it), and a JSON body shaped like the record of an .npy one ({"data", "npy"}, whose "npy" the handler
    ignores) keeps the worker's own signals: no client can make drift measure rows the model never saw."""
    from tests.conftest import load_handler

    mlp = load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)
    row, edge = [0.25] * 99, 0.12344999984  # 0.1234 to 4 digits, 0.1235 as the float32 the model saw
    bodies = [
        json.dumps({"data": [edge, *row]}),
        json.dumps({"data": [1e-46, *row]}),  # 0 in float32
        v2_body([edge, *row], "FP64", (1, 100)),
        json.dumps({"data": [[0.25] * 100, [0.5] * 100], "npy": [100, 2]}),  # not 100 rows of 2
        json.dumps({"data": [0.25] * 100, "npy": [7]}),  # not unreadable
    ]
    records, own = captured_signals(mlp, "mlp", bodies, tmp_path)
    assert [r["status"] for r in records] == [200] * 5
    assert own[0]["x0"] == [0.1235] and own[1]["x0"] == [0.0] and len(own[3]["rms"]) == 2
    assert [r["signals"] for r in records[:3]] == ["input"] * 3
    assert [torchship_signals.from_input("mlp", r["input"]) for r in records[:3]] == own[:3]
    assert [r["signals"] for r in records[3:]] == own[3:]  # the worker's own


def good_mlp_records(n):
    answer = {"class_id": 1, "probabilities": [0.1] * 10}
    return [
        {"model": "mlp", "version": "1.0", "time": 1.0 + i, "status": 200, "signals": "input"}
        | {"input": {"data": [0.25] * 100}, "answer": answer}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "line",
    [
        "[" * 1500 + "]" * 1500,  # 2 KB nested past the parser's recursion
        '{"time": 1' + "0" * 400 + ', "status": 200}',  # no float holds it
        '{"time": 999, "status": 200, "signals": {"rms": [1' + "0" * 400 + "]}}",
        '{"time": 999, "status": 200, "signals": {}, "answer": {"class_id": 0, "probabilities": [1' + "0" * 400 + "]}}",
        '{"time": 999, "status": 200, "signals": {}, "answer": {"class_id": 0, "probabilities": ["x"]}}',
        '{"time": 999, "status": 200, "signals": {}, "answer": {"label": [1], "probabilities": {}}}',
        '{"time": 999, "status": 200, "signals": {"rms": {"a": 1}, "7": [null, NaN, true]}}',
    ],
)
def test_a_crafted_record_is_left_out_not_the_measurement(mlp_run, tmp_path, line):
    """A capture file is anyone's to write: a line drift cannot use costs that line, never the report
    (`torchship drift`) nor the workers' metric."""
    import torchship_drift

    folder = torchship_capture.folder(tmp_path / "capture", "mlp", "1.0")
    folder.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in good_mlp_records(250)) + line + "\n"
    (folder / "capture-20260101T000000-000000000-1.jsonl").write_text(text)
    rep = drift_ops.drift(tmp_path / "capture", archive_of(mlp_run, tmp_path), "mlp", "1.0", window=500)
    assert rep.records in (250, 251) and rep.first is not None and rep.first >= 1.0
    reference = json.loads((mlp_run / "meta.json").read_text())["reference"]
    measured = torchship_drift.DriftGauge(folder, reference, "mlp", "1.0").measure(500)
    assert measured is not None and measured[2] == rep.records
