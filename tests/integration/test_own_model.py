"""A model of your own, as a user lives it, through the CLI on a real server.

A training script of the user's (tests/fixtures/own_model/train.py) trains model.Net in the user's git
repository and saves it with torchship.checkpoint.save; `torchship package NAME --checkpoint DIR
--handler handler.py --model-file model.py` packs it with torchship's handler base and the run's
lineage; it verifies, deploys and answers as the model does in-process. Trained again and recorded in
torchship.yaml, `torchship package NAME --version V` alone packages the newest run, and history shows
both versions with their runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import git
from torchship import errors as E

from .conftest import ROOT

pytestmark = pytest.mark.integration
TORCHSHIP = str(Path(sys.executable).parent / "torchship")
OWN_MODEL = ROOT / "tests" / "fixtures" / "own_model"
ROWS = [[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0], [-2.0, 0.3, 0.1, 1.5]]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The user's repository: handler.py, model.py and train.py, committed."""
    folder = tmp_path_factory.mktemp("own-project")
    for name in ("handler.py", "model.py", "train.py"):
        shutil.copy(OWN_MODEL / name, folder / name)
    (folder / ".gitignore").write_text("checkpoints/\ndata/\n.torchship/\n")
    git(folder, "init", "-q")
    git(folder, "add", ".")
    git(folder, "commit", "-q", "-m", "my model")
    return folder


def run_training(project: Path, seed: int) -> Path:
    """`python train.py --seed N` in the project, as the user runs it; the run folder it saved."""
    r = subprocess.run(
        [sys.executable, "train.py", "--seed", str(seed)], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    saved = r.stdout.split()[1]
    return project / saved


def cli(server, project: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI in the user's project (its keys, registry and torchship.yaml), on the test server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    env["TORCHSHIP_HOME"] = str(project)
    return subprocess.run(
        [TORCHSHIP, "--config", str(server.effective_config_path), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=project,
        env=env,
    )


def expected(project: Path, run: Path) -> list[dict]:
    """What the saved model answers in-process: the handler's answers must be exactly these."""
    sys.path.insert(0, str(project))
    try:
        from model import Net  # the user's model file

        meta = json.loads((run / "meta.json").read_text())
        net = Net(**meta["model"]["architecture"])
        net.load_state_dict(load_file(str(run / "model.safetensors")))
        with torch.no_grad():
            probabilities = torch.softmax(net.eval()(torch.tensor(ROWS)), dim=1)
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("model", None)
    return [{"class_id": int(p.argmax()), "probabilities": p.tolist()} for p in probabilities]


def assert_answers(answers: list[dict], wanted: list[dict]) -> None:
    for answer, want in zip(answers, wanted, strict=True):
        assert answer["class_id"] == want["class_id"]
        assert answer["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)


def test_a_model_of_your_own_from_training_script_to_predictions(server, client, project):
    head = git(project, "rev-parse", "HEAD")
    first = run_training(project, seed=0)
    meta = json.loads((first / "meta.json").read_text())
    assert (meta["name"], meta["git_commit"], meta["git_dirty"]) == ("my-model", head, False)
    assert meta["data"]["files"][0]["path"] == "data/train.csv" and meta["metrics"]["val_accuracy"] > 0.8

    # 1. everything on the command line: the checkpoint, the handler, the model file
    r = cli(
        server,
        project,
        "package",
        "my-model",
        "--version",
        "1.0",
        "--checkpoint",
        first.relative_to(project),
        "--handler",
        "handler.py",
        "--model-file",
        "model.py",
    )
    assert r.returncode == 0, r.stderr
    assert f"packaged my-model 1.0 from checkpoints/my-model/{first.name} with handler.py -> " in r.stdout
    assert (
        "packed torchship's handler base, which the code imports: torchship_base_handler.py, "
        "torchship_capture.py, torchship_drift.py, torchship_models.py, torchship_oip.py, torchship_signals.py"
        in r.stdout
    )
    archive = server.config().model_store / "my-model-1.0.mar"
    r = cli(server, project, "verify", archive)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"built from run {first.name} (git {head}), metrics {{'val_accuracy': " in r.stdout

    try:
        r = cli(server, project, "deploy", "my-model", "--version", "1.0")
        assert r.returncode == 0, r.stderr
        for row, want in zip(ROWS, expected(project, first)):
            r = cli(server, project, "predict", "my-model", "--json", json.dumps({"data": row}))
            assert r.returncode == 0, r.stderr
            assert_answers([json.loads(r.stdout)], [want])
        with pytest.raises(E.BadRequest, match="'data' must be a list of 4 numbers"):
            client.predict("my-model", {"data": [1, 2]})  # the user's own 400, through the base

        # 2. trained again, recorded in torchship.yaml: the name and a version are all it takes
        second = run_training(project, seed=1)
        (project / "torchship.yaml").write_text(
            "models:\n"
            "  my-model:\n"
            "    handler: handler.py\n"
            "    model_file: model.py\n"
            "    checkpoints: checkpoints/my-model\n"
            "    extra_files: []\n"
            "    requirements: null\n"
        )
        r = cli(server, project, "package", "my-model", "--version", "2.0")
        assert r.returncode == 0, r.stderr
        assert f"packaged my-model 2.0 from checkpoints/my-model/{second.name} with handler.py" in r.stdout
        r = cli(server, project, "deploy", "my-model", "--version", "2.0")
        assert r.returncode == 0, r.stderr
        answers = [client.predict("my-model", {"data": row}, version="2.0") for row in ROWS]
        assert_answers(answers, expected(project, second))
        assert expected(project, second) != expected(project, first)  # another model: another answer

        r = cli(server, project, "history", "my-model", "--json")
        assert r.returncode == 0, r.stderr
        versions = {v["version"]: v for v in json.loads(r.stdout)["versions"]}
        assert versions["1.0"]["checkpoint_run"] == first.name and versions["2.0"]["checkpoint_run"] == second.name
        assert versions["2.0"]["git_commit"] == head and versions["2.0"]["registered"]
    finally:
        for version in ("2.0", "1.0"):
            try:
                client.unregister("my-model", version)
            except E.TorchServeError:
                pass
