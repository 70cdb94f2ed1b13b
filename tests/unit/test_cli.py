"""The CLI without a server: usage errors, one-line failures, exit codes."""

import socket

import pytest
from click.testing import CliRunner

from torchship import errors as E
from torchship.cli import cli, exit_code_for, main


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def project(tmp_path, monkeypatch):
    port = closed_port()
    (tmp_path / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{port}\nmodel_store=ms\n")
    (tmp_path / "key_file.json").write_text('{"management": {"key": "m"}, "inference": {"key": "i"}, "API": {"key": "a"}}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)
    for var in ("TS_MANAGEMENT_URL", "TS_INFERENCE_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for cmd in ("serve", "train", "package", "deploy", "predict", "models", "describe", "ping"):
        assert cmd in result.output


def test_predict_needs_exactly_one_input(project, capsys):
    assert main(["predict", "mlp"]) == 2
    assert "exactly one of --json DATA or --file PATH" in capsys.readouterr().err
    assert main(["predict", "mlp", "--json", "{broken"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_load_tests_need_one_source_of_bodies(project, capsys, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    for args in (["bench", "mlp"], ["bench", "mlp", "--data", "{}", "--payload", str(tmp_path / "empty.jsonl")]):
        assert main(args) == 2
        assert "give one of --data JSON or --payload FILE" in capsys.readouterr().err
    assert main(["bench", "mlp", "--payload", str(tmp_path / "empty.jsonl")]) == 2
    assert "has no request bodies" in capsys.readouterr().err


def test_unreachable_server_is_one_line_and_exit_3(project, capsys):
    assert main(["predict", "mlp", "--json", '{"data": [1]}']) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: no TorchServe answers at http://127.0.0.1:") and err.count("\n") == 1
    assert "Traceback" not in err


def test_unknown_model_to_train_and_package(project, capsys):
    assert main(["train", "nope"]) == 1
    assert "no training script for 'nope'" in capsys.readouterr().err
    assert main(["package", "mlp"]) == 8
    assert "run `torchship train mlp` first" in capsys.readouterr().err


def test_deploy_without_an_archive_says_how_to_make_one(project, capsys):
    assert main(["deploy", "mlp", "--version", "9.0"]) == 8
    assert "torchship package mlp --version 9.0" in capsys.readouterr().err


def test_status_of_a_stopped_server_exits_non_zero(project, capsys):
    assert main(["serve", "status"]) == 3
    assert "not running" in capsys.readouterr().out


@pytest.mark.parametrize("exc, code", [
    (E.ServerUnreachable("x"), 3),
    (E.ModelNotFound(404, "ModelNotFoundException", "x"), 4),
    (E.ModelAlreadyExists(409, "ConflictStatusException", "x"), 5),
    (E.Unauthorized(400, "InvalidKeyException", "x"), 6),
    (E.BadRequest(400, "BadRequest", "x"), 7),
    (E.ArchiveError("x"), 8),
    (E.ReadinessTimeout("x"), 9),
    (E.WorkerDied(500, "InternalServerException", "Worker died."), 10),
    (E.ConfigError("x"), 1),
])
def test_exit_code_per_kind_of_failure(exc, code):
    assert exit_code_for(exc) == code
