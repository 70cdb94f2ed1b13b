"""torchship.checkpoint: any training script writes the checkpoint the example models get."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import git
from tests.unit.handler_context import decoded, make_context, run_batch, statuses
from torchship import checkpoint
from torchship import errors as E
from torchship.archiver.digests import recorded_digest
from torchship.train.common import fingerprint_files

OWN_MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "own_model"
ARCHITECTURE = {"in_features": 4, "hidden": 16, "classes": 3}


def own_net(seed: int = 0) -> torch.nn.Module:
    """The fixture project's model.Net (tests/fixtures/own_model/model.py), freshly initialised."""
    spec = importlib.util.spec_from_file_location("own_model_net", OWN_MODEL / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    return module.Net(**ARCHITECTURE)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository of a user's own, one commit, with a data file in it."""
    folder = tmp_path / "repo"
    folder.mkdir()
    git(folder, "init", "-q")
    (folder / "train.py").write_text("print('training')\n")
    (folder / "data.csv").write_text("1,2,3\n4,5,6\n")
    git(folder, "add", ".")
    git(folder, "commit", "-q", "-m", "first")
    return folder


def saved(tmp_path, **kwargs) -> tuple[Path, dict]:
    run = checkpoint.save(own_net(), tmp_path / "run", name="my-model", code_dir=tmp_path, **kwargs)
    return run, json.loads((run / "meta.json").read_text())


# ------------------------------------------------------------------ what is written


def test_save_writes_safetensors_weights_and_the_lineage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "b.csv").write_bytes(b"3,4\n")
    (data / "a.csv").write_bytes(b"1,2\n")
    model = own_net()
    run = checkpoint.save(
        model,
        tmp_path / "checkpoints" / "my-model" / "run1",
        name="my-model",
        architecture=ARCHITECTURE,
        hyper_parameters={"lr": 0.01, "epochs": 3, "optimizer": "Adam", "layers": [16]},
        metrics={"val_accuracy": 0.9, "val_loss": 0.25},
        history=[{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.5}],
        data_files=[data / "b.csv", "data/a.csv"],
        seed=7,
        code_dir=tmp_path,
    )
    assert run == tmp_path / "checkpoints" / "my-model" / "run1"
    weights = load_file(str(run / "model.safetensors"))
    fresh = own_net(seed=1)
    fresh.load_state_dict(weights)  # strict: every name of the model's state_dict
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))

    meta = json.loads((run / "meta.json").read_text())
    assert meta["name"] == "my-model" and meta["run"] == "run1"
    assert meta["model"] == {"kind": "custom", "architecture": ARCHITECTURE}
    assert meta["hyper_parameters"] == {"lr": 0.01, "epochs": 3, "optimizer": "Adam", "layers": [16]}
    assert meta["metrics"] == {"val_accuracy": 0.9, "val_loss": 0.25}
    assert meta["history"] == [{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.5}]
    assert meta["seed"] == 7
    assert meta["data"]["files"] == [
        {"path": "data/a.csv", "sha256": hashlib.sha256(b"1,2\n").hexdigest(), "bytes": 4},
        {"path": "data/b.csv", "sha256": hashlib.sha256(b"3,4\n").hexdigest(), "bytes": 4},
    ]
    # the same fingerprint the example trainers record for their data files
    assert meta["data"]["fingerprint"] == fingerprint_files([data / "a.csv", data / "b.csv"])
    assert meta["torch_version"] == torch.__version__
    assert meta["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["created"].endswith("+00:00")
    assert (meta["git_commit"], meta["git_dirty"]) == (None, None)  # tmp_path is not in git
    # the weights' digest, recorded for packaging too (it then does not hash them again)
    digest = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert meta["weights"] == {
        "file": "model.safetensors",
        "sha256": digest,
        "size": (run / "model.safetensors").stat().st_size,
    }
    assert recorded_digest(run / "model.safetensors") == digest
    assert (run / "training_curve.png").is_file()
    assert not list(run.glob("*.tmp"))


def test_the_examples_and_the_api_write_the_same_lineage(tmp_path, mlp_run):
    _, meta = saved(tmp_path)
    example = json.loads((mlp_run / "meta.json").read_text())
    assert set(meta) == set(example) - {"data_seed", "reference"}  # mlp's seed, and the examples' drift reference
    assert set(meta["weights"]) == set(example["weights"]) and set(meta["model"]) == set(example["model"])
    assert example["git_dirty"] in (True, False, None) and meta["training_seconds"] is None


def test_defaults_are_empty_but_present(tmp_path):
    _, meta = saved(tmp_path)
    assert meta["model"] == {"kind": "custom", "architecture": None}
    assert (meta["hyper_parameters"], meta["metrics"], meta["history"], meta["seed"]) == ({}, {}, [], None)
    assert meta["data"] == {"files": [], "fingerprint": None}


def test_drift_signals_are_described_as_the_reference_drift_judges_against(tmp_path):
    """Numbers by their held-out deciles, categories (pred_class, and any named) by their proportions."""
    values = [float(i) for i in range(100)]
    signals = {"f0": values, "device": ["phone"] * 75 + ["web"] * 25, "pred_class": ["a", "b"] * 50}
    run = checkpoint.save(
        own_net(),
        tmp_path / "run",
        name="my-model",
        code_dir=tmp_path,
        drift_signals=signals,
        categorical_signals=["device"],
    )
    ref = json.loads((run / "meta.json").read_text())["reference"]
    assert ref["kind"] == "custom" and ref["held_out"] == 100
    f0, device, pred = (ref["signals"][k] for k in ("f0", "device", "pred_class"))
    assert f0["type"] == "continuous" and len(f0["edges"]) == 9 and sum(f0["proportions"]) == pytest.approx(1.0)
    assert device == {"type": "categorical", "n": 100, "categories": ["phone", "web"], "proportions": [0.75, 0.25]}
    assert pred["type"] == "categorical" and pred["categories"] == ["a", "b"]
    # without drift_signals: no reference (drift says the archive has none)
    assert "reference" not in json.loads(
        (checkpoint.save(own_net(), tmp_path / "r2", name="m", code_dir=tmp_path) / "meta.json").read_text()
    )


def test_a_state_dict_tensor_metrics_and_a_kind_are_accepted(tmp_path):
    state = own_net().state_dict()
    run = checkpoint.save(
        state, tmp_path / "r", name="m", kind="mlp", metrics={"acc": torch.tensor(0.5)}, code_dir=tmp_path
    )
    meta = json.loads((run / "meta.json").read_text())
    assert meta["model"]["kind"] == "mlp" and meta["metrics"] == {"acc": 0.5}
    assert set(load_file(str(run / "model.safetensors"))) == set(state)


def test_tied_weights_are_saved_under_each_name_and_stay_tied_when_loaded(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.out = torch.nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight  # as language models tie them

    model = Tied()
    run = checkpoint.save(model, tmp_path / "r", name="tied", code_dir=tmp_path)
    weights = load_file(str(run / "model.safetensors"))
    assert set(weights) == {"embed.weight", "out.weight"}
    again = Tied()
    again.load_state_dict(weights)
    assert again.out.weight is again.embed.weight and torch.equal(again.embed.weight, model.embed.weight)


# ------------------------------------------------------------------ refused, nothing written


def test_a_folder_that_holds_a_checkpoint_is_refused(tmp_path):
    run, _ = saved(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(E.TrainingError, match=r"already holds a checkpoint \(meta.json, model.safetensors\)"):
        checkpoint.save(own_net(seed=3), run, name="my-model", code_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    (run / "meta.json").unlink()  # an interrupted save: the weights alone are not overwritten either
    with pytest.raises(E.TrainingError, match=r"already holds a checkpoint \(model.safetensors\)"):
        checkpoint.save(own_net(seed=3), run, name="my-model", code_dir=tmp_path)


BAD_ARGUMENTS = [
    ({"name": "../evil"}, "invalid model name"),
    ({"name": "a b"}, "invalid model name"),
    ({"metrics": {"acc": float("nan")}}, r"metrics\['acc'\] must be a finite number"),
    ({"metrics": {"acc": math.inf}}, r"metrics\['acc'\] must be a finite number"),
    ({"metrics": {"acc": "0.9"}}, r"metrics\['acc'\] must be a finite number"),
    ({"metrics": {"ok": True}}, r"metrics\['ok'\] must be a finite number"),
    ({"metrics": [0.9]}, "metrics must be a mapping"),
    ({"hyper_parameters": {"optimizer": object()}}, "hyper_parameters must be JSON"),
    ({"hyper_parameters": {"lr": float("nan")}}, "hyper_parameters must be JSON"),
    ({"hyper_parameters": {1: "x"}}, "key 1 is not a string"),
    ({"architecture": ["in", 4]}, "architecture must be a mapping"),
    ({"history": [{"epoch": 1, "loss": float("inf")}]}, r"history\[0\]\['loss'\] must be a finite number"),
    ({"history": "epoch 1"}, "history must be a list"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"seed": True}, "seed must be an integer"),
    ({"data_files": ["no/such.csv"]}, "data file not found: no/such.csv"),
    ({"data_files": ["."]}, r"data file \. is not a file"),
    ({"drift_signals": {}}, "drift_signals must be a non-empty mapping"),
    ({"drift_signals": {"f0": "abc"}}, r"drift_signals\['f0'\] must be a list"),
    ({"drift_signals": {"f0": [1.0]}}, r"drift_signals\['f0'\] has 1 value"),
    ({"drift_signals": {"f0": [1.0, float("nan")]}}, r"drift_signals\['f0'\] must hold finite numbers"),
    ({"drift_signals": {"pred_class": [0.5, None]}}, r"drift_signals\['pred_class'\] is categorical"),
    ({"drift_signals": {"f0": [1, 2]}, "categorical_signals": ["f9"]}, "names signals drift_signals does not have: f9"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS, ids=[m for _, m in BAD_ARGUMENTS])
def test_bad_arguments_are_one_clear_error_and_nothing_is_written(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.chdir(tmp_path)
    args = {"name": "my-model", **kwargs}
    with pytest.raises(E.BadInput, match=message) as caught:
        checkpoint.save(own_net(), tmp_path / "run", code_dir=tmp_path, **args)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_a_state_that_safetensors_cannot_hold_is_refused_before_the_folder_is_made(tmp_path):
    class WithExtraState(torch.nn.Linear):
        def get_extra_state(self) -> dict:
            return {"labels": ["a", "b"]}

        def set_extra_state(self, state: dict) -> None:
            pass

    with pytest.raises(
        E.TrainingError, match=r"'_extra_state' is a dict, not a tensor: safetensors holds tensors only"
    ):
        checkpoint.save(WithExtraState(2, 2), tmp_path / "run", name="m", code_dir=tmp_path)
    with pytest.raises(E.TrainingError, match="expected a torch.nn.Module or a state_dict"):
        checkpoint.save([torch.zeros(1)], tmp_path / "run", name="m", code_dir=tmp_path)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ the user's git repository


def test_the_commit_and_dirty_flag_are_the_training_codes_repository(repo, tmp_path):
    head = git(repo, "rev-parse", "HEAD")
    run = checkpoint.save(own_net(), tmp_path / "r1", name="m", code_dir=repo, data_files=[repo / "data.csv"])
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["git_commit"], meta["git_dirty"]) == (head, False)

    (repo / "train.py").write_text("print('changed')\n")  # uncommitted change to the code that trained
    meta = json.loads((checkpoint.save(own_net(), tmp_path / "r2", name="m", code_dir=repo) / "meta.json").read_text())
    assert (meta["git_commit"], meta["git_dirty"]) == (head + "+dirty", True)


def test_by_default_the_running_scripts_repository_not_torchships(repo, tmp_path, monkeypatch):
    head = git(repo, "rev-parse", "HEAD")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # run from another folder: the script's own repository counts
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(repo / "train.py"), raising=False)
    run = checkpoint.save(own_net(), tmp_path / "r", name="m")
    assert json.loads((run / "meta.json").read_text())["git_commit"] == head

    monkeypatch.delattr(sys.modules["__main__"], "__file__", raising=False)  # a notebook: the current folder
    monkeypatch.chdir(repo)
    assert checkpoint.code_folder() == repo
    monkeypatch.chdir(elsewhere)
    run = checkpoint.save(own_net(), tmp_path / "r2", name="m")
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["git_commit"], meta["git_dirty"]) == (None, None)


# ------------------------------------------------------------------ runs


def test_new_run_makes_unique_folders_under_the_models_folder(tmp_path):
    first, second = checkpoint.new_run(tmp_path, "my-model"), checkpoint.new_run(tmp_path, "my-model")
    assert first != second and first.parent == second.parent == tmp_path / "my-model"
    assert first.is_dir() and not list(first.iterdir())
    checkpoint.save(own_net(), first, name="my-model", code_dir=tmp_path)  # an empty new run is fine
    with pytest.raises(E.BadInput, match="invalid model name"):
        checkpoint.new_run(tmp_path, "../x")
    assert not (tmp_path.parent / "x").exists()


def test_latest_is_the_newest_complete_run(tmp_path):
    assert checkpoint.latest(tmp_path, "my-model") is None and checkpoint.latest(tmp_path / "nothing") is None
    runs = [checkpoint.new_run(tmp_path, "my-model") for _ in range(12)]  # the same second: -1 ... -11
    for run in runs[:11]:
        checkpoint.save(own_net(), run, name="my-model", code_dir=tmp_path)
    (runs[11] / "model.safetensors").write_bytes(b"")  # incomplete: no meta.json
    assert checkpoint.latest(tmp_path, "my-model") == runs[10]  # -10 is newer than -9 (not by text)
    assert checkpoint.latest(tmp_path / "my-model") == runs[10]  # the model's own folder
    meta = json.loads((runs[3] / "meta.json").read_text())
    (runs[3] / "meta.json").write_text(json.dumps({**meta, "created": "2099-01-01T00:00:00+00:00"}))
    assert checkpoint.latest(tmp_path, "my-model") == runs[3]  # newest by the time it records
    assert checkpoint.read_meta(runs[3])["created"].startswith("2099")
    with pytest.raises(E.TrainingError, match="not a complete checkpoint"):
        checkpoint.read_meta(runs[11])


# ------------------------------------------------------------------ a handler of your own loads it


@pytest.fixture
def own_handler(tmp_path, monkeypatch):
    """The fixture project's handler.py, initialised from a saved checkpoint as a worker would."""
    model = own_net(seed=5)
    run = checkpoint.save(model, tmp_path / "run", name="my-model", architecture=ARCHITECTURE, code_dir=tmp_path)
    model_dir = tmp_path / "model-dir"  # the unpacked archive
    model_dir.mkdir()
    for f in ("handler.py", "model.py"):
        shutil.copy(OWN_MODEL / f, model_dir / f)
    for f in ("model.safetensors", "meta.json"):
        shutil.copy(run / f, model_dir / f)
    monkeypatch.syspath_prepend(str(model_dir))
    for name in ("handler", "model"):  # the fixture's generic module names: imported fresh, removed after
        monkeypatch.delitem(sys.modules, name, raising=False)
    handler = importlib.import_module("handler").NetHandler()
    handler.initialize(make_context(model_dir))
    yield handler, model.eval()
    for name in ("handler", "model"):
        sys.modules.pop(name, None)


def test_a_handler_built_on_the_base_serves_the_saved_model(own_handler):
    handler, model = own_handler
    rows = [[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    ctx, results = run_batch(handler, [json.dumps({"data": rows[0]}), b"{broken", json.dumps({"data": rows[1]})])
    assert statuses(ctx, 3) == [200, 400, 200]
    answers = decoded(results)
    expected = torch.softmax(model(torch.tensor(rows)), dim=1)
    for answer, probabilities in zip((answers[0], answers[2]), expected):
        assert answer["class_id"] == int(probabilities.argmax())
        assert answer["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-6)
    assert answers[1]["code"] == 400


def test_the_base_says_what_to_override_for_a_model_of_your_own(tmp_path):
    import torchship_base_handler

    run = checkpoint.save(own_net(), tmp_path / "run", name="my-model", code_dir=tmp_path)

    class Plain(torchship_base_handler.BatchHandler):
        pass

    with pytest.raises(ValueError, match=r"model kind 'custom' in meta.json: .* Override load_model"):
        Plain().initialize(make_context(run))
