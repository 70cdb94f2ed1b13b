"""Drift on a real TorchServe: the workers capture what mlp is sent, with its signals; held-out rows are calm
against the training reference packed in the archive, scaled rows drift, and `torchship drift` exits 13."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchship.ops import capture as ops
from torchship.ops import drift as drift_ops

pytestmark = pytest.mark.integration

TORCHSHIP = str(Path(sys.executable).parent / "torchship")
N = 240


def test_held_out_rows_are_calm_scaled_rows_drift(server, client, store, mlp_deployed, mlp_run, tmp_path):
    from torchship.train import held_out

    root = server.capture_dir
    rows = held_out("mlp", mlp_run).inputs(N)[0].numpy()
    ops.write_settings(root, "mlp", "1.0", sample=1.0)
    time.sleep(1.2)  # a worker looks at its settings at most once a second
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    env["TORCHSHIP_HOME"] = str(tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                TORCHSHIP,
                "--config",
                str(server.effective_config_path),
                "drift",
                "mlp",
                "--capture-dir",
                str(root),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )

    try:
        client.predict_many("mlp", [{"data": r} for r in rows.tolist()], concurrency=4)
        calm = drift_ops.drift(root, store / "mlp-1.0.mar", "mlp", "1.0", window=N)
        assert not calm.drift and calm.records == N, calm.drifted
        r = cli("--window", str(N))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "no drift" in r.stdout and "pred_class" in r.stdout

        client.predict_many("mlp", [{"data": r} for r in (3 * rows).tolist()], concurrency=4)
        r = cli("--window", str(N), "--json", "--plot", str(tmp_path / "drift.png"))
        assert r.returncode == 13, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["drift"] is True and report["version"] == "1.0" and report["records"] == N
        assert "rms" in report["drifted"] and "pred_score" in report["drifted"]
        assert "drifted from its training reference" in r.stderr
        assert (tmp_path / "drift.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        ops.turn_off(root, "mlp", "1.0")


def test_the_workers_publish_drift_on_the_metrics_port(server, client, mlp_deployed, mlp_run):
    """TorchshipDrift / TorchshipDriftScore / TorchshipDriftRecords, as Prometheus reads them: 0 for held-out
    rows, 1 once the traffic is scaled; the same verdict `torchship drift` gives."""
    from torchship.train import held_out

    root = server.capture_dir
    folder = root / "mlp" / "1.0"
    rows = held_out("mlp", mlp_run).inputs(N)[0].numpy()

    def fresh() -> None:  # a phase judged on its own requests only
        for p in folder.glob("capture-*.jsonl"):
            p.unlink()

    def gauges() -> dict[str, float]:
        m = client.metrics()
        out = {}
        for name in ("TorchshipDrift", "TorchshipDriftScore", "TorchshipDriftRecords"):
            found = m.select(name, ModelName="mlp", ModelVersion="1.0")
            if found:
                out[name] = found[0].value
        return out

    def published(rows_each_poll, until) -> dict[str, float]:
        """Send a request a poll (a worker emits what it measured with its next batch) until `until` holds."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            client.predict_many("mlp", [{"data": r} for r in rows_each_poll], concurrency=2)
            g = gauges()
            if until(g):
                return g
            time.sleep(0.3)
        raise AssertionError(f"the drift metric never read as expected: {gauges()}")

    ops.write_settings(root, "mlp", "1.0", sample=1.0, drift_every_s=1)
    try:
        fresh()
        time.sleep(1.2)  # a worker looks at its settings at most once a second
        client.predict_many("mlp", [{"data": r} for r in rows.tolist()], concurrency=4)
        calm = published(rows[:2].tolist(), lambda g: g.get("TorchshipDriftRecords", 0) >= N)
        assert calm["TorchshipDrift"] == 0 and calm["TorchshipDriftScore"] < 1, calm

        fresh()
        client.predict_many("mlp", [{"data": r} for r in (3 * rows).tolist()], concurrency=4)
        drifted = published((3 * rows[:2]).tolist(), lambda g: g.get("TorchshipDrift") == 1)
        assert drifted["TorchshipDriftScore"] >= 1 and drifted["TorchshipDriftRecords"] >= drift_ops.MIN_RECORDS
    finally:
        ops.turn_off(root, "mlp", "1.0")
