"""torchship.yaml: the project records its own models, so `torchship package NAME` needs nothing else."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from torchship import Project, checkpoint
from torchship import errors as E
from torchship.archiver.names import InvalidName
from torchship.cli import main
from torchship.projectfile import ModelRecord, load_project_file

from .test_checkpoint import ARCHITECTURE, OWN_MODEL, own_net

RECORD = """\
models:
  my-model:
    handler: handler.py          # paths relative to the project root
    model_file: model.py
    checkpoints: checkpoints/my-model
    extra_files: []
    requirements: null
"""
BASE = [
    "torchship_base_handler.py",
    "torchship_capture.py",
    "torchship_drift.py",
    "torchship_models.py",
    "torchship_oip.py",
    "torchship_signals.py",
]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A user's project as `torchship init` lays it out: config, torchship.yaml, handler.py, model.py."""
    (tmp_path / "config.properties").write_text("model_store=model_store\n")
    for name in ("handler.py", "model.py"):
        shutil.copy(OWN_MODEL / name, tmp_path / name)
    (tmp_path / "torchship.yaml").write_text(RECORD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)
    return tmp_path


def train(project: Path, seed: int = 0) -> Path:
    run = checkpoint.new_run(project / "checkpoints", "my-model")
    return checkpoint.save(
        own_net(seed), run, name="my-model", architecture=ARCHITECTURE, metrics={"acc": 0.5}, seed=seed
    )


def write(project: Path, text: str) -> Path:
    path = project / "torchship.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ reading the file


def test_a_record_is_read_with_its_paths_resolved_against_the_root(project):
    (project / "labels.json").write_text("[]")
    (project / "requirements.txt").write_text("numpy\n")
    write(
        project,
        RECORD.replace("extra_files: []", "extra_files: [labels.json]").replace(
            "requirements: null", "requirements: requirements.txt"
        )
        + "  other:\n    handler: ./handler.py\n",
    )
    models = load_project_file(project / "torchship.yaml").models
    assert models["my-model"] == ModelRecord(
        name="my-model",
        handler=project / "handler.py",
        model_file=project / "model.py",
        checkpoints=project / "checkpoints" / "my-model",  # need not exist before the first run
        extra_files=(project / "labels.json",),
        requirements=project / "requirements.txt",
    )
    assert models["other"] == ModelRecord(name="other", handler=project / "handler.py")
    assert Project(project).paths.project_file == project / "torchship.yaml"
    assert set(Project(project).recorded_models()) == {"my-model", "other"}


def test_no_file_an_empty_file_and_no_models_record_nothing(project):
    (project / "torchship.yaml").unlink()
    assert load_project_file(project / "torchship.yaml").models == {}
    for text in ("", "models:\n", "models: {}\n"):
        assert load_project_file(write(project, text)).models == {}


BAD = [
    ("- models\n", ": expected a mapping with a top-level 'models:' key"),
    ("models: {}\nversion: 1\n", ": unknown top-level key(s) ['version']; the file holds 'models:'"),
    ("models: [my-model]\n", ": models: expected a mapping of model names to their files"),
    ("models:\n  my-model: handler.py\n", ": models.my-model: expected a mapping with handler, model_file"),
    (
        "models:\n  my-model:\n    handler: handler.py\n    weights: w.pt\n",
        ": models.my-model: unknown key(s) ['weights']",
    ),
    ("models:\n  my-model:\n    model_file: model.py\n", ": models.my-model.handler: required"),
    (
        "models:\n  my-model:\n    handler: 3\n",
        ": models.my-model.handler: expected a path relative to the project root, not a number",
    ),
    ("models:\n  my-model:\n    handler: /etc/passwd\n", ": models.my-model.handler: /etc/passwd is not relative"),
    (
        "models:\n  my-model:\n    handler: ../handler.py\n",
        ": models.my-model.handler: ../handler.py is outside the project root",
    ),
    (
        "models:\n  my-model:\n    handler: a/../../x.py\n",
        ": models.my-model.handler: a/../../x.py is outside the project root",
    ),
    ("models:\n  my-model:\n    handler: nope.py\n", ": models.my-model.handler: nope.py does not exist"),
    ("models:\n  my-model:\n    handler: checkpoints\n", ": models.my-model.handler: checkpoints is not a file"),
    (
        "models:\n  my-model:\n    handler: handler.py\n    model_file: []\n",
        ": models.my-model.model_file: expected a path",
    ),
    (
        "models:\n  my-model:\n    handler: handler.py\n    extra_files: x.json\n",
        ": models.my-model.extra_files: expected a list of paths",
    ),
    (
        "models:\n  my-model:\n    handler: handler.py\n    extra_files: [x.json]\n",
        ": models.my-model.extra_files[0]: x.json does not exist",
    ),
    (
        "models:\n  my-model:\n    handler: handler.py\n    checkpoints: model.py\n",
        ": models.my-model.checkpoints: model.py is not a folder",
    ),
    (
        "models:\n  my-model:\n    handler: handler.py\n    requirements: true\n",
        ": models.my-model.requirements: expected a path relative to the project root, not a boolean",
    ),
    ("models: {\n", " is not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(": ", 1)[-1][:40] for _, m in BAD])
def test_a_bad_file_is_one_error_naming_the_file_and_key(project, text, message):
    (project / "checkpoints").mkdir()
    path = write(project, text)
    with pytest.raises(E.ConfigError) as caught:
        load_project_file(path)
    assert str(caught.value).startswith(f"{path}{message}") and "\n" not in str(caught.value)


def test_a_bad_model_name_is_bad_input(project):
    path = write(project, "models:\n  ../evil:\n    handler: handler.py\n")
    with pytest.raises(InvalidName, match=r"torchship.yaml: models: invalid model name '../evil'"):
        load_project_file(path)


# ------------------------------------------------------------------ packaging from it


def test_package_name_alone_packs_the_newest_run_with_the_recorded_files(project):
    with pytest.raises(E.ArchiveError, match=r"no checkpoint of my-model in checkpoints/my-model \(torchship.yaml"):
        Project(project).package("my-model", version="1.0")
    older, newest = train(project, seed=1), train(project, seed=2)
    with Project(project) as p:
        result = p.package("my-model", version="1.0")
        assert result.checkpoint == newest and result.handler_base == tuple(BASE)
        with zipfile.ZipFile(result.path) as z:
            names = set(z.namelist())
            meta = json.loads(z.read("meta.json"))
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        assert names >= {"handler.py", "model.py", "model.safetensors", "meta.json", *BASE}
        assert manifest["model"]["modelFile"] == "model.py" and manifest["model"]["handler"] == "handler.py"
        assert meta == json.loads((newest / "meta.json").read_text())
        assert result.provenance["checkpoint"] == meta  # its lineage, as an example archive's
        assert p.verify(result.path).ok
        [archive] = p.registry.archives("my-model")
        assert archive.checkpoint_run == newest.name

        # what is given overrides the record: another run
        result = p.package("my-model", version="2.0", checkpoint=older)
        assert result.checkpoint == older
        with zipfile.ZipFile(result.path) as z:
            assert json.loads(z.read("meta.json"))["seed"] == 1


def test_the_cli_packages_a_recorded_model_from_its_name(project, capsys):
    run = train(project)
    assert main(["package", "my-model", "--version", "1.0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"packaged my-model 1.0 from checkpoints/my-model/{run.name} with handler.py -> ")
    assert out[1] == f"packed torchship's handler base, which the code imports: {', '.join(BASE)}"
    assert out[2].startswith("build digest sha256:") and out[2].endswith("signed: my-model-1.0.mar.sig")
    # a recorded model takes --requirements and --no-import-check without --handler
    (project / "requirements.txt").write_text("numpy\n")
    assert main(["package", "my-model", "--version", "2.0", "--requirements", "requirements.txt"]) == 0
    capsys.readouterr()
    assert main(["package", "my-model", "--name", "other"]) == 2
    assert "two names given: my-model and --name other" in capsys.readouterr().err
    assert main(["package", "mystery", "--version", "1.0"]) == 8
    assert capsys.readouterr().err.startswith("error: mystery is neither an example model (")


def test_the_cli_packages_a_checkpoint_with_a_handler_and_model_file(project, capsys):
    (project / "torchship.yaml").unlink()  # no record: everything on the command line
    run = train(project)
    args = ["package", "mine", "--version", "1.0", "--checkpoint", str(run), "--handler", "handler.py"]
    assert main([*args, "--model-file", "model.py"]) == 0
    assert "packaged mine 1.0 from checkpoints/my-model/" in capsys.readouterr().out
    assert main([*args, "--model-file", "model.py", "--weights", str(run / "model.safetensors"), "--force"]) == 8
    assert "as a checkpoint folder or as a file (--weights), not both" in capsys.readouterr().err
    # without the model file the import check names it, with the flag that packs it; nothing is built
    assert main([*args, "--version", "2.0"]) == 8
    err = capsys.readouterr().err
    assert "model (handler.py line 14). Pack it into the archive: --extra-file model.py. Nothing was packaged" in err
    assert not (project / "model_store" / "mine-2.0.mar").exists()


def test_your_own_copy_of_the_base_is_packed_instead_of_torchships(project, tmp_path):
    run = train(project)
    mine = project / "vendor"
    mine.mkdir()
    own_base = mine / "torchship_base_handler.py"
    own_base.write_text(
        (Path(__file__).resolve().parents[2] / "handlers" / "torchship_base_handler.py").read_text() + "\n# my copy\n"
    )
    with Project(project) as p:
        result = p.package("my-model", version="1.0", checkpoint=run, extra_files=[own_base])
    # what my copy imports
    assert result.handler_base == (
        "torchship_capture.py",
        "torchship_drift.py",
        "torchship_models.py",
        "torchship_oip.py",
        "torchship_signals.py",
    )
    with zipfile.ZipFile(result.path) as z:
        assert z.read("torchship_base_handler.py").endswith(b"# my copy\n")
