"""Sampled capture on a real TorchServe: the workers of a served version record what they were sent and
what they answered once `torchship capture` turns it on, and stop when it is turned off; no restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import rows
from torchship.ops import capture as ops

pytestmark = pytest.mark.integration

TORCHSHIP = str(Path(sys.executable).parent / "torchship")


def settle() -> None:
    time.sleep(1.2)  # a worker looks at its settings at most once a second


def test_capture_on_redacted_rotated_and_off_without_a_restart(server, client, mlp_deployed):
    root = server.capture_dir
    before = {w.pid for w in client.describe("mlp")[0].workers}
    ops.write_settings(root, "mlp", "1.0", sample=1.0, redact={"user": "hash"})
    settle()
    start = time.time()  # other tests of the session may have captured mlp 1.0 before
    bodies = [{"data": r, "user": f"user-{i % 2}"} for i, r in enumerate(rows(6, seed=9))]
    answers = [client.predict("mlp", b) for b in bodies]
    records = [r for r in ops.records(root, "mlp", "1.0") if r["time"] >= start]
    assert len(records) == 6 and [r["status"] for r in records] == [200] * 6
    assert sorted(json.dumps(r["answer"], sort_keys=True) for r in records) == sorted(
        json.dumps(a, sort_keys=True) for a in answers
    )
    assert len({r["request_id"] for r in records}) == 6  # TorchServe's own request ids
    users = [r["input"].pop("user") for r in records]
    assert all(u.startswith("hmac:") for u in users) and len(set(users)) == 2
    assert sorted(json.dumps(r["input"]["data"]) for r in records) == sorted(json.dumps(b["data"]) for b in bodies)
    key = client.keys.key("inference")
    for path in (root / "mlp" / "1.0").iterdir():  # (only mlp requests without a user field came before)
        data = path.read_bytes()
        assert key.encode() not in data and b"user-0" not in data  # never a token, never the raw id

    # bounded and rotated, while it serves
    ops.write_settings(root, "mlp", "1.0", sample=1.0, max_bytes=32768, file_bytes=4096)
    settle()
    client.predict_many("mlp", [{"data": r} for r in rows(150, seed=3)], concurrency=4)
    files = list((root / "mlp" / "1.0").glob("capture-*.jsonl"))
    record_bytes = max(len(line) + 1 for f in files for line in f.read_bytes().splitlines())
    # at most the bound, beside the file being written (closed at file_bytes plus the batch that crossed it)
    assert len(files) >= 2 and sum(f.stat().st_size for f in files) <= 32768 + 4096 + 8 * record_bytes
    assert len(ops.records(root, "mlp", "1.0")) < 150 + 6  # the oldest were removed

    # a sample: some, not all
    ops.write_settings(root, "mlp", "1.0", sample=0.3, max_bytes=1 << 20)
    settle()
    start = time.time()
    client.predict_many("mlp", [{"data": r} for r in rows(200, seed=5)], concurrency=4)
    sampled = [r for r in ops.records(root, "mlp", "1.0") if r["time"] >= start]
    assert 20 <= len(sampled) <= 110  # 60 expected

    # off: nothing more, what was captured stays, and the workers never restarted
    assert ops.turn_off(root, "mlp", "1.0")
    settle()
    kept = len(ops.records(root, "mlp", "1.0"))
    client.predict_many("mlp", [{"data": r} for r in rows(20, seed=6)], concurrency=2)
    assert len(ops.records(root, "mlp", "1.0")) == kept > 0
    assert {w.pid for w in client.describe("mlp")[0].workers} == before


def test_the_cli_captures_the_version_the_server_serves(server, mlp_deployed, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    env["TORCHSHIP_HOME"] = str(tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TORCHSHIP, "--config", str(server.effective_config_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )

    r = cli("capture", "mlp", "--sample", "0.2", "--redact", "user", "--redact", "email=drop")
    assert r.returncode == 0, r.stderr
    assert "capturing 0.2 of mlp 1.0's requests" in r.stdout and "user (hash), email (drop)" in r.stdout
    settings = json.loads((tmp_path / ".torchship" / "capture" / "mlp" / "1.0" / "settings.json").read_text())
    assert settings["sample"] == 0.2 and settings["redact"] == {"user": "hash", "email": "drop"}
    r = cli("capture", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["sample"] == 0.2
    r = cli("capture", "mlp", "--off")
    assert r.returncode == 0 and "capture of mlp 1.0 is off" in r.stdout
    for bad, says in (
        (["capture", "mlp", "--sample", "2"], "is not in the range 0<=x<=1"),
        (["capture", "mlp", "--sample", "0.1", "--redact", "user=rot13"], "FIELD=hash or FIELD=drop"),
        (["capture", "no-such-model", "--sample", "0.1"], "no-such-model"),
        (["capture", "--sample", "0.1"], "name the model"),
    ):
        r = cli(*bad)
        assert r.returncode != 0 and says in r.stderr, (bad, r.stderr)
        assert says in r.stderr.strip().splitlines()[-1], r.stderr  # the last line says why


def test_replay_judges_a_candidate_on_what_production_answered(
    server, client, store, key_dir, public_key, mlp_run, tmp_path
):
    """bench --replay sends the captured requests; rollout --replay rejects a version that does not give
    the answers production gave (one trained on shuffled labels), and the default never changes."""
    from torchship import archiver
    from torchship.archiver import ArchiveSpec, example_spec
    from torchship.ops.deploy import deploy
    from torchship.ops.rollout import rollout
    from torchship.perf.bench import bench
    from torchship.train import mlp

    bad_run = mlp.train(tmp_path, seed=2, quick=True, progress=False, shuffle_labels=True).run_dir
    for version, run in (("1.0", mlp_run), ("3.0", bad_run)):
        spec = example_spec("mlp", run, version)
        spec = ArchiveSpec(
            "rpl", version, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
        )
        archiver.package(spec, store, key_dir, force=True)
    deploy(client, store, "rpl", "1.0", public_key=public_key)
    try:
        root = server.capture_dir
        ops.write_settings(root, "rpl", "1.0", sample=1.0)
        settle()
        client.predict_many("rpl", [{"data": r} for r in rows(80, seed=11)], concurrency=4)
        captured = ops.records(root, "rpl", "1.0")
        assert len(captured) == 80
        bodies = ops.replay_inputs(captured)
        figures = bench(client, "rpl", bodies, concurrency=2, requests=len(bodies), engine="python")
        assert figures["failed"] == 0 and figures["sent"] == 80
        golden = ops.replay_golden(captured)
        assert len(golden) == 80 and all(set(g.expected) == {"class_id"} for g in golden)
        report = rollout(client, store, "rpl", "3.0", golden=golden, public_key=public_key, warmup=2, load_requests=20)
        assert not report.passed and report.gate == "golden"
        assert report.figures["previous_accuracy"] == 1.0 and report.figures["accuracy"] < 0.5
        assert client.describe("rpl")[0].version == "1.0"
    finally:
        for d in client.versions("rpl"):
            if not d.is_default:
                client.unregister("rpl", d.version)
        client.unregister("rpl")
