"""`torchship init`: the files it writes, all or nothing, --force, names, the templates, and that the
scaffold's code is clean and runs in a worker (the handler with a hand-built context, no server)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from torchship.cli import main
from torchship.ops.desired import load_desired
from torchship.projectfile import load_project_file
from torchship.scaffold import (
    DEFAULT_NAME,
    TEMPLATES,
    ProjectExists,
    default_name,
    handler_module,
    project_files,
    template_text,
    write_project,
)

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "config.properties",
    "log4j2.xml",
    "torchship.yaml",
    "deploy.yaml",
    "model.py",
    "train.py",
    "iris_handler.py",
    ".gitignore",
}
# what a worker's Python has for the scaffold's handler and model file: the standard library, torch,
# numpy, safetensors, torchship's handler base and its signals (packed beside the handler), and model.py
WORKER_MODULES = {"torch", "numpy", "safetensors", "torchship_base_handler", "torchship_signals", "model"}


@pytest.fixture(autouse=True)
def _no_project_env(monkeypatch):
    for var in ("TORCHSHIP_HOME", "TS_MANAGEMENT_URL", "TS_INFERENCE_URL"):
        monkeypatch.delenv(var, raising=False)


def test_init_writes_a_project(tmp_path, capsys):
    folder = tmp_path / "new" / "proj"  # made, parents too
    assert main(["init", str(folder), "--name", "iris"]) == 0
    assert {p.name for p in folder.iterdir()} == FILES
    out = capsys.readouterr().out
    assert out.startswith(f"created project iris in {folder}:\n")
    for name in FILES:
        assert f"  {name} " in out
    for step in (
        f"cd {folder}",
        "train.py",
        "torchship package iris --version 1.0",
        "torchship serve start",
        "torchship apply deploy.yaml",
        'torchship predict iris --json \'{"features": [',
    ):
        assert step in out, step

    # torchship.yaml: exactly the schema `torchship package NAME` reads
    project = yaml.safe_load((folder / "torchship.yaml").read_text())
    assert project == {
        "models": {
            "iris": {
                "handler": "iris_handler.py",
                "model_file": "model.py",
                "checkpoints": "checkpoints/iris",
                "extra_files": [],
                "requirements": None,
            }
        }
    }
    record = load_project_file(folder / "torchship.yaml").models["iris"]
    assert (record.handler, record.model_file) == (folder / "iris_handler.py", folder / "model.py")
    desired = load_desired(folder / "deploy.yaml").models["iris"]
    assert (desired.versions, desired.default, desired.batch_size) == (("1.0",), "1.0", 8)
    ignored = (folder / ".gitignore").read_text().splitlines()
    assert {"checkpoints/", "model_store/", ".torchship/", ".venv/", "secret.yaml"} <= set(ignored)


def test_the_server_files_are_the_repositorys(tmp_path):
    """One source: the packaged templates are the repository's config.properties and log4j2.xml (links
    in the repository, real files in the wheel), and init writes them unchanged."""
    write_project(tmp_path, project_files("iris"))
    for name in ("config.properties", "log4j2.xml"):
        repo = (ROOT / name).read_text(encoding="utf-8")
        assert template_text(name) == repo, f"torchship/templates/{name} differs from {name}"
        assert (tmp_path / name).read_text(encoding="utf-8") == repo
    assert (TEMPLATES / "config.properties").resolve() == (ROOT / "config.properties").resolve()


def test_without_dir_init_uses_the_current_folder_and_its_name(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "My Project!"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert main(["init"]) == 0
    out = capsys.readouterr().out
    assert "created project My-Project in" in out and "cd " not in out
    assert (folder / "my_project_handler.py").is_file()
    assert yaml.safe_load((folder / "torchship.yaml").read_text())["models"] == {
        "My-Project": {
            "handler": "my_project_handler.py",
            "model_file": "model.py",
            "checkpoints": "checkpoints/My-Project",
            "extra_files": [],
            "requirements": None,
        }
    }


def test_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "model.py").write_text("mine\n")
    (tmp_path / "deploy.yaml").write_text("also mine\n")
    assert main(["init", str(tmp_path), "--name", "iris"]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "deploy.yaml, model.py" in err and "nothing was written" in err and "--force" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.yaml", "model.py"]  # nor a temporary file
    assert (tmp_path / "model.py").read_text() == "mine\n"

    with pytest.raises(ProjectExists) as caught:
        write_project(tmp_path, project_files("iris"))
    assert [p.name for p in caught.value.paths] == ["deploy.yaml", "model.py"]


def test_force_overwrites(tmp_path, capsys):
    (tmp_path / "model.py").write_text("mine\n")
    (tmp_path / "notes.txt").write_text("kept\n")
    assert main(["init", str(tmp_path), "--name", "iris", "--force"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert lines["model.py"].endswith("(overwritten)") and not lines["train.py"].endswith("(overwritten)")
    model_file = next(f for f in project_files("iris").files if f.path == "model.py")
    assert (tmp_path / "model.py").read_text() == model_file.text
    assert (tmp_path / "notes.txt").read_text() == "kept\n"
    assert {p.name for p in tmp_path.iterdir()} == FILES | {"notes.txt"}


def test_bad_names_and_folders_are_usage_errors(tmp_path, capsys):
    assert main(["init", str(tmp_path / "a"), "--name", "../evil"]) == 7
    assert "invalid model name" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    assert main(["init", str(tmp_path / "file")]) == 2


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("iris", "iris"),
        ("My Project!", "My-Project"),
        ("_scratch.", "scratch"),
        ("a..b", "a.b"),
        ("3d-net", "3d-net"),
        ("...", DEFAULT_NAME),
        ("été", "t"),
        ("ééé", DEFAULT_NAME),
        ("x" * 300, "x" * 64),
    ],
)
def test_default_name(tmp_path, folder, name):
    assert default_name(tmp_path / folder) == name


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("iris", "iris_handler"),
        ("My.Model-2", "my_model_2_handler"),
        ("3d-net", "model_3d_net_handler"),
        ("torchship_base", "my_torchship_base_handler"),  # the base's own module name is taken
        ("_", "model_handler"),
    ],
)
def test_handler_module_names(name, module):
    assert handler_module(name) == module and module.isidentifier()


@pytest.mark.parametrize("name", ["1.0", "123", "yes", "null", "on", "a-b.c_d"])
def test_yaml_files_read_back_the_name(tmp_path, name):
    write_project(tmp_path, project_files(name))
    assert list(yaml.safe_load((tmp_path / "torchship.yaml").read_text())["models"]) == [name]
    assert list(load_desired(tmp_path / "deploy.yaml").models) == [name]


def test_the_scaffolds_python_is_clean(tmp_path):
    """Lint and format as a user's own project would run them (no torchship config), and compile."""
    write_project(tmp_path, project_files("iris"))
    python_files = sorted(p.name for p in tmp_path.glob("*.py"))
    assert python_files == ["iris_handler.py", "model.py", "train.py"]
    for path in tmp_path.glob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    ruff = [sys.executable, "-m", "ruff"]
    for args in (["check", "--isolated", "--select", "E,W,F,I,B,UP"], ["format", "--isolated", "--check"]):
        r = subprocess.run([*ruff, *args, "."], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def _top_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_handler_and_model_import_only_what_a_worker_has(tmp_path):
    write_project(tmp_path, project_files("iris"))
    for name in ("iris_handler.py", "model.py"):
        outside = _top_level_imports(tmp_path / name) - WORKER_MODULES - set(sys.stdlib_module_names)
        assert not outside, f"{name} imports {sorted(outside)}"
    assert "torchship" in _top_level_imports(tmp_path / "train.py")  # train.py runs with torchship installed


HANDLER_RUN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    from model import build_model
    from tests.unit.handler_context import decoded, make_context, statuses

    model_dir = Path(sys.argv[1])
    hyper_parameters = {"in_features": 4, "hidden": 8, "labels": ["a", "b", "c"]}
    (model_dir / "meta.json").write_text(json.dumps({"name": "iris", "hyper_parameters": hyper_parameters}))
    torch.manual_seed(0)
    reference = build_model(hyper_parameters).eval()
    save_file(reference.state_dict(), str(model_dir / "model.safetensors"))

    from iris_handler import IrisHandler

    handler = IrisHandler()
    handler.initialize(make_context(model_dir))
    row = [0.5, -1.0, 2.0, 0.0]
    bodies = [
        {"features": row},
        {"features": [row, [0, 0, 0, 0]]},
        {"features": [1, 2]},
        {"data": row},
        {"features": ["a", "b", "c", "d"]},
        {"features": [1e39, 0, 0, 0]},
        b"{not json",
        {"features": row},
    ]
    ctx = make_context(model_dir, batch=len(bodies))
    results = handler.handle([{"body": b if isinstance(b, bytes) else json.dumps(b)} for b in bodies], ctx)
    with torch.inference_mode():
        expected = torch.softmax(reference(torch.tensor([row])), 1)[0].tolist()
    print(json.dumps({"codes": statuses(ctx, len(bodies)), "answers": decoded(results), "expected": expected}))
    """
)


@pytest.mark.slow
def test_the_handler_answers_each_request_of_a_batch(tmp_path):
    """The scaffold's handler as a worker runs it: imported by its file name beside model.py and the base,
    initialised from meta.json and safetensors weights; a batch with bad items answers each on its own."""
    project = tmp_path / "project"
    write_project(project, project_files("iris"))
    model_dir = tmp_path / "model_dir"
    model_dir.mkdir()
    env_path = [str(project), str(ROOT / "handlers"), str(ROOT)]
    r = subprocess.run(
        [sys.executable, "-c", HANDLER_RUN, str(model_dir)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": ":".join(env_path), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["codes"] == [200, 200, 400, 400, 400, 400, 400, 200]
    first, pair, short, no_field, text, huge, broken, last = out["answers"]
    assert first == last and first["label"] in ("a", "b", "c") and set(first["probabilities"]) == {"a", "b", "c"}
    assert [first["probabilities"][k] for k in "abc"] == pytest.approx(out["expected"], abs=1e-5)
    assert first["label"] == "abc"[first["class_id"]] == max("abc", key=first["probabilities"].get)
    assert isinstance(pair, list) and len(pair) == 2 and pair[0] == first
    assert "shape [2]" in short["message"] and "4 numbers" in short["message"]
    assert "missing field 'features'" in no_field["message"]
    assert "only numbers" in text["message"]
    assert "too large" in huge["message"]
    assert broken["code"] == 400 and "JSON" in broken["message"]


def test_serve_commands_in_an_empty_folder_say_run_init(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args in (["serve", "status"], ["serve", "start"], ["models"]):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no config.properties" in err and "torchship init" in err, err


def test_the_local_server_falls_back_to_the_packaged_logging(tmp_path, monkeypatch):
    """Quiet logging with worker tracebacks everywhere: log4j2.xml beside config.properties, else
    torchship's own (the template init copies)."""
    from torchship.ops import server as server_mod

    started: list[list[str]] = []

    class Launcher:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(server_mod.subprocess, "Popen", Launcher)
    monkeypatch.setattr(server_mod, "_check_java", lambda: None)
    monkeypatch.setattr(server_mod, "_check_ports_free", lambda cfg: None)
    monkeypatch.setattr(server_mod, "_torchserve_executable", lambda: "torchserve")
    monkeypatch.setattr(server_mod.LocalServer, "_wait_healthy", lambda self, timeout: None)

    def log_config_of(folder: Path) -> Path:
        (folder / "config.properties").write_text("model_store=store\n")
        server_mod.LocalServer(folder / "config.properties", folder / "work").start()
        cmd = started[-1]
        return Path(cmd[cmd.index("--log-config") + 1])

    bare = tmp_path / "bare"
    bare.mkdir()
    packaged = log_config_of(bare)
    assert packaged == TEMPLATES.resolve() / "log4j2.xml"
    assert packaged.read_text(encoding="utf-8") == (ROOT / "log4j2.xml").read_text(encoding="utf-8")

    own = tmp_path / "own"
    own.mkdir()
    (own / "log4j2.xml").write_text("<Configuration/>\n")
    assert log_config_of(own) == own / "log4j2.xml"
