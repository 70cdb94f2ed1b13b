"""Sampled capture (handlers/torchship_capture.py, torchship.ops.capture): what the worker records of the
requests it serves, under the settings `torchship capture` writes, and what it never records."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torchship_capture
import torchship_signals

from tests.unit.handler_context import run_batch, statuses
from torchship.ops import capture as ops
from torchship.sdk.errors import BadInput

GOOD = json.dumps({"data": [0.25] * 100})


@pytest.fixture
def mlp(mlp_run, tmp_path_factory, tmp_path, monkeypatch):
    from tests.conftest import load_handler

    handler = load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)
    handler.capture = torchship_capture.Capture(tmp_path / "capture", "mlp", "1.0")
    monkeypatch.setattr(torchship_capture, "CHECK_EVERY_S", 0.0)  # read settings on every batch
    return handler


def captured(tmp_path, version="1.0"):
    return ops.records(tmp_path / "capture", "mlp", version)


def test_nothing_is_captured_until_it_is_turned_on(mlp, tmp_path):
    run_batch(mlp, [GOOD] * 4)
    assert not (tmp_path / "capture").exists()
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0)
    ctx, results = run_batch(
        mlp, [GOOD, b'{"data": [1, 2]}'], headers=[{"authorization": "Bearer s3cret", "X-Request-Id": "gw-1"}, {}]
    )
    records = captured(tmp_path)
    assert [r["status"] for r in records] == statuses(ctx, 2) == [200, 400]
    first, bad = records
    assert first["input"] == json.loads(GOOD) and first["answer"] == json.loads(results[0])
    assert (first["model"], first["version"], first["request_id"], first["batch"]) == ("mlp", "1.0", "req-0", 2)
    assert first["worker_ms"] > 0 and first["time"] > 1.7e9
    assert first["gateway_id"] == "gw-1" and "gateway_id" not in records[1]  # the gateway's id, when it sent one
    assert bad["input"] == {"data": [1, 2]} and "100" in json.dumps(bad["answer"])  # the 400 the caller got
    # never a header: the token is nowhere in the capture folder
    for path in (tmp_path / "capture").rglob("*"):
        if path.is_file():
            assert b"s3cret" not in path.read_bytes()
    # turned off: nothing more is written, what was captured stays
    assert ops.turn_off(tmp_path / "capture", "mlp", "1.0")
    run_batch(mlp, [GOOD] * 3)
    assert len(captured(tmp_path)) == 2


def test_a_sample_records_about_that_share(mlp, tmp_path):
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=0.25)
    for _ in range(50):
        run_batch(mlp, [GOOD] * 8)
    n = len(captured(tmp_path))
    assert 40 <= n <= 170  # 400 requests at 0.25: 100 expected; outside this range is a 1-in-10^9 event


def test_redacted_fields_are_hashed_the_same_way_or_dropped(mlp, tmp_path):
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0, redact={"user": "hash", "email": "drop"})
    body = {"data": [0.25] * 100, "user": "alice", "email": "a@example.com"}
    run_batch(mlp, [json.dumps(body), json.dumps({**body, "user": "bob"}), json.dumps(body)])
    inputs = [r["input"] for r in captured(tmp_path)]
    assert all("email" not in i for i in inputs)
    alice, bob, alice_again = (i["user"] for i in inputs)
    assert alice.startswith("hmac:") and alice == alice_again and alice != bob
    assert "alice" not in json.dumps(inputs)
    key = tmp_path / "capture" / "mlp" / "1.0" / torchship_capture.SALT
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32


def test_capture_is_bounded_and_rotated(mlp, tmp_path):
    max_bytes, file_bytes = 32768, 4096
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0, max_bytes=max_bytes, file_bytes=file_bytes)
    for _ in range(120):
        run_batch(mlp, [GOOD] * 2)
    folder = tmp_path / "capture" / "mlp" / "1.0"
    files = sorted(folder.glob("capture-*.jsonl"))
    records = captured(tmp_path)
    record_bytes = max(len(line) + 1 for f in files for line in f.read_bytes().splitlines())
    assert len(files) >= 2
    # at most max_bytes, beside the file still being written (which closes at file_bytes plus a batch)
    assert sum(f.stat().st_size for f in files) <= max_bytes + file_bytes + 2 * record_bytes
    assert 0 < len(records) < 240 and records == sorted(records, key=lambda r: r["time"])  # the oldest went first


def test_two_workers_never_remove_the_file_the_other_is_writing(mlp, mlp_run, tmp_path_factory, tmp_path, monkeypatch):
    # two workers of one version share its folder; this test's process plays both (one pid), so the
    # second worker's files are named as another live process's and a gone one's would be
    import os
    import subprocess
    import sys

    from tests.conftest import load_handler

    max_bytes, file_bytes = 16384, 4096
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0, max_bytes=max_bytes, file_bytes=file_bytes)
    folder = tmp_path / "capture" / "mlp" / "1.0"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # a pid no process can have
    try:
        run_batch(mlp, [GOOD])  # the first worker's file, then the other (live) and a gone worker's
        live = folder / f"capture-19700101T000000-000000001-{other.pid}.jsonl"
        dead = folder / f"capture-19700101T000000-000000002-{gone}.jsonl"
        for path in (live, dead):
            path.write_bytes(b"")
        for _ in range(60):  # the first worker rotates and prunes many times over
            run_batch(mlp, [GOOD] * 2)
        assert live.exists()  # the oldest file, but a live worker's newest: it may still be writing it
        assert not dead.exists()  # a gone worker's file is history like any other
        assert sum(f.stat().st_size for f in folder.glob("capture-*.jsonl")) <= max_bytes + 2 * file_bytes
    finally:
        other.kill()
        other.wait()

    # a file removed by hand while a worker writes it: the worker's next batch begins a new one
    second = load_handler(mlp_run, "mlp_handler", "MLPHandler", tmp_path_factory)
    second.capture = torchship_capture.Capture(tmp_path / "capture", "mlp", "1.0")
    run_batch(second, [GOOD])  # (it reads its settings at its first batch, and then not for a minute)
    monkeypatch.setattr(torchship_capture, "CHECK_EVERY_S", 60.0)
    current = second.capture._path
    assert current is not None and current.exists()
    os.unlink(current)
    run_batch(second, [GOOD])
    assert second.capture._path is not None and second.capture._path != current and second.capture._path.exists()


def test_a_huge_input_is_recorded_by_its_size(mlp, tmp_path):
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0)
    rows = [[0.5] * 100] * 1024
    run_batch(mlp, [json.dumps({"data": rows})])
    [record] = captured(tmp_path)
    assert record["status"] == 200 and record["input"]["omitted_bytes"] > torchship_capture.MAX_FIELD_BYTES


def test_a_capture_that_cannot_be_written_never_fails_a_request(mlp, tmp_path, caplog, monkeypatch):
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0)

    def disk_full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torchship_capture.Capture, "_write", disk_full)
    for _ in range(3):
        ctx, results = run_batch(mlp, [GOOD] * 3)
        assert statuses(ctx, 3) == [200] * 3 and all(json.loads(r)["class_id"] >= 0 for r in results)
    assert caplog.text.count("capture of mlp 1.0 failed: [Errno 28]") == 1  # said once, not per batch


def test_bad_settings_on_disk_turn_capture_off_with_a_warning(mlp, tmp_path, caplog):
    folder = tmp_path / "capture" / "mlp" / "1.0"
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"sample": 2}))
    run_batch(mlp, [GOOD])
    assert not captured(tmp_path) and "sample is a fraction from 0 to 1" in caplog.text


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"sample": 1.5}, "fraction from 0 to 1"),
        ({"sample": True}, "fraction from 0 to 1"),
        ({"sample": 0.1, "redact": {"user": "rot13"}}, '"hash" or "drop"'),
        ({"sample": 0.1, "max_bytes": 10}, "at least 4096"),
        ({"sample": 0.1, "max_bytes": 8192, "file_bytes": 65536}, "file_bytes is larger than max_bytes"),
        ({"sample": 0.1, "drift_every_s": -1}, "drift_every_s is 0"),
        ({"sample": 0.1, "drift_every_s": "30"}, "drift_every_s is 0"),
        ({"sample": 0.1, "headers": True}, "unknown capture settings: headers"),
    ],
)
def test_settings_are_checked_before_they_are_written(tmp_path, settings, says):
    with pytest.raises(ValueError, match=says):
        torchship_capture.check_settings(settings)  # as the worker reads them
    if "headers" not in settings:
        with pytest.raises(BadInput, match=says):
            ops.write_settings(tmp_path, "mlp", "1.0", **settings)
    assert not (tmp_path / "mlp" / "1.0" / "settings.json").exists()


def test_names_that_are_not_one_folder_are_refused(tmp_path):
    with pytest.raises(Exception, match="name|version"):
        ops.write_settings(tmp_path, "../etc", "1.0", sample=0.1)
    with pytest.raises(Exception, match="name|version"):
        ops.write_settings(tmp_path, "mlp", "../../x", sample=0.1)


def test_folders_and_settings_are_private_and_status_lists_them(tmp_path):
    ops.write_settings(tmp_path / "c", "mlp", "1.0", sample=0.5, redact={"user": "hash"})
    assert stat.S_IMODE((tmp_path / "c" / "mlp" / "1.0").stat().st_mode) == 0o700
    [s] = ops.status(tmp_path / "c")
    assert (s.model, s.version, s.sample, s.redact, s.files) == ("mlp", "1.0", 0.5, {"user": "hash"}, 0)
    assert ops.parse_redact(["user", "email=drop"]) == {"user": "hash", "email": "drop"}
    with pytest.raises(BadInput, match="FIELD=hash or FIELD=drop"):
        ops.parse_redact(["user=keep"])


def test_replay_sends_what_was_sent_and_expects_what_was_answered():
    import numpy as np

    records = [
        {"status": 200, "input": {"data": [1.0]}, "answer": {"class_id": 3, "probabilities": [0.1, 0.9]}},
        {"status": 200, "input": {"base64": "iVBORw=="}, "answer": {"label": "shoe", "score": 0.8}},
        {"status": 200, "input": {"npy": [1, 2], "data": [[1.0, 2.0]]}, "answer": {"items": [4, 7], "scores": [1.0]}},
        {"status": 400, "input": {"data": [1, 2]}, "answer": {"message": "bad"}},  # not an answer to expect
        {"status": 200, "input": {"omitted_bytes": 70000}, "answer": {"class_id": 1}},  # too big: not kept
        {"status": 200, "input": {"user": "hmac:0123456789abcdef"}, "answer": {"items": [1]}},  # redacted
        {"status": 200, "input": {"text": "ok"}, "answer": {"embedding": [0.1, 0.2]}},  # nothing decisive
    ]
    bodies = ops.replay_inputs(records)
    assert bodies[0] == {"data": [1.0]} and bodies[1] == b"\x89PNG"
    assert isinstance(bodies[2], np.ndarray) and bodies[2].shape == (1, 2) and bodies[2].dtype == np.float32
    assert len(bodies) == 4  # the 400, the oversized and the redacted ones are left out
    golden = ops.replay_golden(records)
    assert [g.expected for g in golden] == [{"class_id": 3}, {"label": "shoe"}, {"items": [4, 7]}]


def test_replay_with_nothing_captured_says_how_to_capture(tmp_path, monkeypatch):
    from torchship import Project

    (tmp_path / "config.properties").write_text((Path(__file__).parents[2] / "config.properties").read_text())
    with Project(tmp_path) as p:
        monkeypatch.setattr(Project, "_served_version", lambda self, name: "1.0")
        with pytest.raises(BadInput, match="torchship capture mlp --sample 0.1"):
            p.replay_bodies("mlp")
        with pytest.raises(BadInput, match="torchship capture mlp --sample 0.1"):
            p.replay_golden("mlp")


def test_deploy_yaml_says_what_each_listed_version_captures(tmp_path):
    from torchship.ops.desired import ConfigError, parse_desired

    state = parse_desired(
        {
            "models": {
                "mlp": {
                    "versions": ["1.0", "2.0"],
                    "capture": {"sample": 0.1, "redact": {"user": "hash"}, "max_mb": 16},
                },
                "fashion": {"versions": ["1.0"]},  # no entry: its capture is left as it is
            }
        }
    )
    assert state.models["mlp"].to_dict()["capture"] == {
        "sample": 0.1,
        "redact": {"user": "hash"},
        "max_mb": 16,
        "file_mb": 4,
        "drift_every_s": 30,  # how often the workers measure drift for the metrics port, by default
    }
    every = parse_desired({"models": {"mlp": {"versions": ["1.0"], "capture": {"sample": 1, "drift_every_s": 5}}}})
    assert every.models["mlp"].capture["drift_every_s"] == 5
    root = tmp_path / "capture"
    ops.write_settings(root, "fashion", "1.0", sample=0.5)
    actions = ops.capture_plan(root, state)
    assert [(a.kind, a.model, a.version, a.detail) for a in actions] == [
        ("capture", "mlp", "1.0", "sample 0.1, redact user (hash)"),
        ("capture", "mlp", "2.0", "sample 0.1, redact user (hash)"),
    ]
    for a in actions:
        ops.apply_capture(root, a)
    assert ops.capture_plan(root, state) == []  # applied: nothing more to do
    assert {(s.model, s.version, s.sample) for s in ops.status(root)} == {
        ("mlp", "1.0", 0.1),
        ("mlp", "2.0", 0.1),
        ("fashion", "1.0", 0.5),
    }
    off = parse_desired({"models": {"mlp": {"versions": ["1.0"], "capture": {"sample": 0}}}})
    [action] = ops.capture_plan(root, off)
    assert action.detail == "off"
    ops.apply_capture(root, action)
    assert ops.capture_plan(root, off) == [] and not (root / "mlp" / "1.0" / "settings.json").exists()
    for bad, says in (
        ({"sample": 2}, "fraction from 0 to 1"),
        ({"sample": 0.1, "redact": {"user": "keep"}}, '"hash" or "drop"'),
        ({"sample": 0.1, "max_mb": 0}, "whole number of MiB"),
        ({"sample": 0.1, "drift_every_s": 0.5}, "0 \\(no drift metric\\) or 1 to 86400"),
        ({"sample": 0.1, "headers": True}, "expected"),
        ("yes", "expected"),
    ):
        with pytest.raises(ConfigError, match=says):
            parse_desired({"models": {"mlp": {"versions": ["1.0"], "capture": bad}}})


def test_a_record_is_one_json_line_whatever_its_ids_and_bodies_hold(tmp_path):
    """Records are formatted as bytes, not encoded from a dict: ids with quotes, newlines or no id at
    all, a body as sent and one that is not one line of ASCII JSON, each still one valid JSON line."""
    cap = torchship_capture.Capture(tmp_path, "m", 'v"1')
    head = cap.batch_head(1700000000.123, 2.5, 2)
    odd = 'id "with" quotes\nand a newline'
    for request_id, raw, body in (
        (None, b'{"data": [1, 2]}', {"data": [1, 2]}),
        (odd, '{"text": "caf\u00e9"}\n'.encode(), {"text": "caf\u00e9"}),  # not ASCII, a newline: re-encoded
        ("r-1", b"\x89PNG...", b"\x89PNG..."),  # bytes: base64
    ):
        line = cap.line(head, request_id, 400, cap.input_bytes(body, raw), torchship_capture.answer_bytes(b'{"a":1}'))
        assert line.endswith(b"}\n") and line.count(b"\n") == 1
        record = json.loads(line)
        assert (record["request_id"], record["version"], record["status"], record["batch"]) == (
            request_id,
            'v"1',
            400,
            2,
        )
        assert record["input"] == (body if isinstance(body, dict) else {"base64": "iVBORy4uLg=="})
        assert record["answer"] == {"a": 1} and record["time"] == 1700000000.123


@pytest.mark.parametrize("size", [0, 1, 700, 49_140, 49_141, 70_000])
def test_a_binary_body_is_recorded_as_the_general_encoding_would(size):
    """Binary bodies (images) skip the JSON encoder: the same bytes as encoding {"base64": ...} gives,
    its size past the field bound."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert torchship_capture.base64_json(data) == torchship_capture.json_bytes(data)
    assert torchship_capture.Capture(None, "m", "1").input_bytes(data, data) == torchship_capture.json_bytes(data)


@pytest.mark.parametrize("rule", ["hash", "drop"])
def test_a_redacted_body_that_is_not_json_is_neither_recorded_nor_replayed(
    fashion_run, tmp_path_factory, tmp_path, monkeypatch, rule
):
    """A photo may be the personal data: a `body` rule records an image's HMAC (the same picture, the
    same value) or its size, never its bytes, and replay leaves such a record out."""
    import io

    from PIL import Image

    from tests.conftest import load_handler

    fashion = load_handler(fashion_run, "fashion_handler", "FashionHandler", tmp_path_factory)
    fashion.capture = torchship_capture.Capture(tmp_path / "capture", "fashion", "1.0")
    monkeypatch.setattr(torchship_capture, "CHECK_EVERY_S", 0.0)
    ops.write_settings(tmp_path / "capture", "fashion", "1.0", sample=1.0, redact={"body": rule})
    pngs = []
    for shade in (30, 200, 30):
        buffer = io.BytesIO()
        Image.new("L", (28, 28), shade).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    ctx, _ = run_batch(fashion, pngs)
    records = ops.records(tmp_path / "capture", "fashion", "1.0")
    assert [r["status"] for r in records] == statuses(ctx, 3) == [200] * 3
    inputs = [r["input"] for r in records]
    if rule == "hash":
        assert all(i.startswith("hmac:") for i in inputs) and inputs[0] == inputs[2] != inputs[1]
    else:
        assert inputs == [{"redacted_bytes": len(p)} for p in pngs]
    folder = tmp_path / "capture" / "fashion" / "1.0"
    text = b"".join(p.read_bytes() for p in folder.glob("*.jsonl"))
    assert b"iVBOR" not in text  # no PNG's base64 anywhere
    assert all(isinstance(r["signals"], dict) for r in records)  # drift still measures them (the worker's)
    assert ops.replay_inputs(records) == []


def npy_bytes(array):
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


def capture_text(tmp_path, model="mlp"):
    return b"".join(p.read_bytes() for p in (tmp_path / "capture" / model / "1.0").glob("*.jsonl"))


def test_under_a_redact_rule_a_request_that_failed_to_read_is_recorded_by_its_size(mlp, tmp_path):
    """A body that never parsed cannot have its fields redacted: under any rule it is recorded by its
    size alone (without a rule, as sent: test_nothing_is_captured_until_it_is_turned_on)."""
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0, redact={"user": "hash", "body": "hash"})
    torn = '{"user": "alice@example.com", "data": [' + ",".join(["0.25"] * 100) + "]"  # no closing brace
    bad_npy = npy_bytes([0.101] * 100) + b"\x00"  # one byte too many
    ctx, _ = run_batch(mlp, [torn, bad_npy])
    records = captured(tmp_path)
    assert [r["status"] for r in records] == statuses(ctx, 2) == [400, 400]
    assert [r["input"] for r in records] == [{"redacted_bytes": len(torn)}, {"redacted_bytes": len(bad_npy)}]
    text = capture_text(tmp_path)
    assert b"alice" not in text and b"k0NUTVBZ" not in text  # neither the user nor the .npy's base64


def test_signals_that_are_the_input_are_not_recorded_beside_its_redaction(mlp, tmp_path):
    """mlp's drift signals are its features: with them redacted (a field rule, or `body` on an .npy
    body) the record holds them nowhere, and drift reads only what the record holds; a rule on another
    field keeps them measured."""
    import numpy as np

    secret = np.round(np.linspace(0.1011, 0.9989, 100), 4).tolist()
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0, redact={"data": "hash", "body": "drop"})
    run_batch(mlp, [json.dumps({"data": secret}), npy_bytes(secret)])
    records = captured(tmp_path)
    assert [r["status"] for r in records] == [200, 200]
    assert records[0]["input"]["data"].startswith("hmac:") and records[1]["input"] == {"redacted_bytes": 528}
    assert all(torchship_signals.from_input("mlp", r["input"]) is None for r in records)  # left out of drift
    text = capture_text(tmp_path)
    assert not any(b"%g" % v in text for v in secret[1:-1])
    # a handler of your own whose signals are the features, not derived where drift is measured
    mlp.__class__ = type("OwnMLP", (type(mlp),), {"signals_from_input": False})
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0, redact={"user": "hash", "data": "hash"})
    run_batch(mlp, [json.dumps({"user": "bob", "data": secret})])
    assert "signals" not in captured(tmp_path)[-1]
    ops.write_settings(tmp_path / "capture", "mlp", "1.0", sample=1.0, redact={"user": "hash"})
    run_batch(mlp, [json.dumps({"user": "bob", "data": secret})])
    kept = captured(tmp_path)[-1]
    assert kept["input"]["user"].startswith("hmac:") and kept["signals"]["x1"] == [secret[1]]
