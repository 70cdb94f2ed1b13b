"""A project of your own, as a user lives it: `torchship init` in an empty folder, the scaffold's
train.py, package, serve start, apply deploy.yaml, predict, a second version rolled out, serve stop;
every command run in that folder, with nothing of the repository's but the installed torchship."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchship import TorchServe
from torchship.ops.server import free_port_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
TORCHSHIP = str(BIN / "torchship")
PYTHON = str(BIN / "python")
ROW = [0.5, -1.2, 0.3, 2.0]


def use_free_ports(config: Path) -> None:
    """Rewrite the listeners of a project's config.properties to free loopback ports, keeping the rest."""
    text = config.read_text(encoding="utf-8")
    for key, value in free_port_overrides().items():
        text, count = re.subn(rf"(?m)^{re.escape(key)}=.*$", f"{key}={value}", text)
        assert count == 1, key
    config.write_text(text, encoding="utf-8")


@pytest.fixture
def project(tmp_path_factory):
    """An empty folder outside the repository, and a runner for commands in it. Its path is short: the
    workers' sockets live under it (.torchship/server/tmp), and a Unix socket path has at most 107 bytes."""
    folder = tmp_path_factory.mktemp("init") / "iris"
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHSHIP_HOME", "TS_MANAGEMENT_URL", "TS_INFERENCE_URL")}

    def run(*cmd: str, where: Path = folder) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), cwd=where, env=env, capture_output=True, text=True, timeout=300)

    yield folder, run
    if (folder / ".torchship" / "server").exists():
        run(TORCHSHIP, "serve", "stop")


def held_out_rows(folder: Path, count: int = 240) -> list[list[float]]:
    """Rows like the ones train.py held out (the stand-in data's rows, in its held-out order): as
    many as drift needs (at least 200), the held-out rows first."""
    import numpy as np
    import torch

    table = np.loadtxt(folder / "data" / "iris.csv", delimiter=",", skiprows=1, dtype=np.float32)
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(0)).tolist()
    return [[round(float(v), 6) for v in table[i, :-1]] for i in order[:count]]


def test_init_train_package_serve_apply_predict_rollout(project):
    folder, run = project
    r = run(TORCHSHIP, "init", str(folder), "--name", "iris", where=folder.parent)
    assert r.returncode == 0, r.stderr
    assert "torchship package iris --version 1.0" in r.stdout
    use_free_ports(folder / "config.properties")

    r = run(PYTHON, "train.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("trained iris in ")
    accuracy = float(re.search(r"val_accuracy ([0-9.]+)", r.stdout).group(1))
    assert accuracy >= 0.9, r.stdout
    [run_dir] = (folder / "checkpoints" / "iris").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["name"] == "iris" and meta["hyper_parameters"]["labels"] == ["a", "b", "c"]
    assert meta["data"]["fingerprint"].startswith("sha256:") and meta["metrics"]["val_accuracy"] == accuracy
    assert (folder / "tests" / "golden" / "iris.jsonl").is_file()

    r = run(TORCHSHIP, "package", "iris", "--version", "1.0")  # torchship.yaml names everything else
    assert r.returncode == 0, r.stderr
    assert (folder / "model_store" / "iris-1.0.mar").is_file()
    r = run(TORCHSHIP, "verify", "model_store/iris-1.0.mar")
    assert r.returncode == 0, r.stdout + r.stderr

    r = run(TORCHSHIP, "serve", "start")
    assert r.returncode == 0, r.stderr
    assert str(folder / ".torchship" / "server" / "logs") in r.stdout
    r = run(TORCHSHIP, "apply", "deploy.yaml")
    assert r.returncode == 0, r.stderr
    assert "register     iris 1.0" in r.stdout

    r = run(TORCHSHIP, "predict", "iris", "--json", json.dumps({"features": ROW}))
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["label"] in ("a", "b", "c") and answer["label"] == "abc"[answer["class_id"]]
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    r = run(TORCHSHIP, "predict", "iris", "--json", json.dumps({"features": [ROW, ROW]}))
    assert r.returncode == 0 and json.loads(r.stdout) == [answer, answer]
    r = run(TORCHSHIP, "predict", "iris", "--json", '{"features": [1, 2]}')
    assert r.returncode == 7 and "'features' has shape [2]" in r.stderr and r.stderr.count("\n") == 1

    # a second version, judged on the golden set that train.py wrote, then promoted
    r = run(PYTHON, "train.py", "--seed", "1")
    assert r.returncode == 0, r.stderr
    r = run(TORCHSHIP, "package", "iris", "--version", "2.0")
    assert r.returncode == 0, r.stderr
    r = run(TORCHSHIP, "rollout", "iris", "--version", "2.0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "iris 2.0 is the default" in r.stdout
    r = run(TORCHSHIP, "history", "iris")
    assert r.returncode == 0, r.stderr
    versions = r.stdout.split("events of")[0]
    assert "2.0" in versions and "1.0" in versions and meta["data"]["fingerprint"][:19] in versions

    # drift: train.py recorded the held-out rows' reference; the handler measures each request the same way
    calm_rows = held_out_rows(folder)
    r = run(TORCHSHIP, "capture", "iris", "--sample", "1.0")
    assert r.returncode == 0, r.stderr
    time.sleep(1.2)  # a worker looks at its settings at most once a second
    client = TorchServe.from_config(folder / "config.properties")
    answers = client.predict_many("iris", [{"features": row} for row in calm_rows], concurrency=4)
    assert not [a for a in answers if isinstance(a, Exception)]
    r = run(TORCHSHIP, "drift", "iris", "--window", str(len(calm_rows)), "--json")
    calm = json.loads(r.stdout)
    assert r.returncode == 0 and not calm["drift"], r.stdout + r.stderr
    assert calm["records"] == len(calm_rows) and {s["signal"] for s in calm["signals"]} == {
        "f0",
        "f1",
        "f2",
        "f3",
        "pred_class",
        "pred_score",
    }
    shifted = [[3 * v + 2 for v in row] for row in calm_rows]  # features on another scale
    answers = client.predict_many("iris", [{"features": row} for row in shifted], concurrency=4)
    assert not [a for a in answers if isinstance(a, Exception)]
    r = run(TORCHSHIP, "drift", "iris", "--window", str(len(shifted)), "--json")
    moved = json.loads(r.stdout)
    assert r.returncode == 13 and moved["drift"], r.stdout + r.stderr
    assert {"f0", "f1", "f2", "f3"} <= {s["signal"] for s in moved["signals"] if s["verdict"] == "drift"}

    r = run(TORCHSHIP, "serve", "status")
    assert r.returncode == 0, r.stderr
    assert re.search(r"iris\s+2\.0\s+\*\s+READY", r.stdout), r.stdout
    # the project's own quiet logging: no per-request lines reach the worker log
    model_log = (folder / ".torchship" / "server" / "logs" / "model_log.log").read_text()
    assert "Backend received inference at" not in model_log

    r = run(TORCHSHIP, "serve", "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
