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
        f"inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{port}\nmodel_store=ms\n"
    )
    (tmp_path / "key_file.json").write_text(
        '{"management": {"key": "m"}, "inference": {"key": "i"}, "API": {"key": "a"}}'
    )
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


@pytest.mark.parametrize(
    "exc, code",
    [
        (E.ServerUnreachable("x"), 3),
        (E.ModelNotFound(404, "ModelNotFoundException", "x"), 4),
        (E.ModelAlreadyExists(409, "ConflictStatusException", "x"), 5),
        (E.Unauthorized(400, "InvalidKeyException", "x"), 6),
        (E.BadRequest(400, "BadRequest", "x"), 7),
        (E.ArchiveError("x"), 8),
        (E.ReadinessTimeout("x"), 9),
        (E.WorkerDied(500, "InternalServerException", "Worker died."), 10),
        (E.ConfigError("x"), 1),
        (E.BadInput("x"), 7),
        (E.RolloutFailed("x"), 11),
        (E.LoadGeneratorError("x"), 1),
        (PermissionError(13, "Permission denied"), 1),
        (ValueError("x"), 70),  # not the user's input: a bug
        (KeyError("x"), 70),
    ],
)
def test_exit_code_per_kind_of_failure(exc, code):
    assert exit_code_for(exc) == code


def test_a_bug_is_one_line_that_says_so_not_bad_input(project, capsys, monkeypatch):
    from torchship.project import Project

    def broken(self, name):
        raise ValueError("an index went wrong")

    monkeypatch.setattr(Project, "history", broken)
    assert main(["history", "mlp"]) == 70
    err = capsys.readouterr().err
    assert err.startswith("internal error: ValueError: an index went wrong (a bug in torchship;")
    assert err.count("\n") == 1 and "Traceback" not in err
    monkeypatch.setenv("TORCHSHIP_DEBUG", "1")
    assert main(["history", "mlp"]) == 70
    assert "Traceback" in capsys.readouterr().err


def test_wrk_failing_is_one_line(project, capsys, monkeypatch):
    from torchship.project import Project

    def failing(self, *args, **kwargs):
        raise E.LoadGeneratorError("wrk failed: unable to connect")

    monkeypatch.setattr(Project, "bench", failing)
    assert main(["bench", "mlp", "--data", "{}"]) == 1
    err = capsys.readouterr().err
    assert err == "error: wrk failed: unable to connect\n"


# ---------------------------------------------------------------- names and versions: one rule, checked first

from .test_names import short_id  # noqa: E402


@pytest.fixture
def nothing_may_happen(project, monkeypatch):
    """`project`, with every way to read an archive or reach a server turned into a test failure."""
    import torchship.ops.deploy
    from torchship import archiver
    from torchship.sdk.client import TorchServe

    def forbidden(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} was called")

        return fail

    monkeypatch.setattr(TorchServe, "_send", forbidden("a request"))
    monkeypatch.setattr(torchship.ops.deploy, "deploy", forbidden("deploy"))
    for fn in ("ensure_verified", "verify_archive", "package", "example_spec"):
        monkeypatch.setattr(archiver, fn, forbidden(f"archiver.{fn}"))
    return project


BAD = ["../probemm", "a/b", "a\nb", "..", "mlр", "x" * 200, ".hidden", "a b"]


def _commands(bad: str, tmp) -> list[list[str]]:
    """Every command that takes a model NAME (or --name), given `bad`."""
    handler = tmp / "handler.py"
    handler.write_text("raise SystemExit('never imported')\n")
    return [
        ["deploy", bad, "--version", "1.0"],
        ["deploy", bad],
        ["train", bad],
        ["package", bad, "--version", "1.0"],
        ["package", "--handler", str(handler), "--name", bad],
        ["predict", bad, "--json", "{}"],
        ["predict", bad, "--stream", "--json", "{}"],
        ["explain", bad, "--json", "{}"],
        ["autoscale", bad, "--min", "1", "--max", "2", "--duration", "1"],
        ["tune", bad, "--slo-p99-ms", "10", "--data", "{}"],
        ["bench", bad, "--data", "{}"],
        ["metrics", bad],
        ["models", bad],
        ["describe", bad],
        ["history", bad],
        ["rollout", bad, "--version", "2.0"],
        ["rollback", bad],
        ["scale", bad, "--min", "1"],
        ["set-default", bad, "1.0"],
        ["unregister", bad],
        ["unregister", bad, "--version", "1.0"],
    ]


def _version_commands(bad: str) -> list[list[str]]:
    return [
        ["deploy", "probemm", "--version", bad],
        ["package", "mlp", "--version", bad],
        ["predict", "mlp", "--version", bad, "--json", "{}"],
        ["explain", "mlp", "--version", bad, "--json", "{}"],
        ["autoscale", "mlp", "--version", bad, "--min", "1", "--max", "2"],
        ["tune", "mlp", "--slo-p99-ms", "10", "--version", bad, "--data", "{}"],
        ["bench", "mlp", "--version", bad, "--data", "{}"],
        ["describe", "mlp", "--version", bad],
        ["rollout", "mlp", "--version", bad],
        ["scale", "mlp", "--min", "1", "--version", bad],
        ["set-default", "mlp", bad],
        ["unregister", "mlp", "--version", bad],
    ]


def _refused(capsys, args, what) -> None:
    assert main(args) == 7, args
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: invalid {what} ") and captured.err.count("\n") == 1, (args, captured.err)
    assert captured.out == "", args


@pytest.mark.parametrize("bad", BAD, ids=short_id)
def test_every_command_refuses_a_bad_name_first(nothing_may_happen, capsys, bad):
    """One line, exit 7 (bad input), before any file is read or any request is sent."""
    for args in _commands(bad, nothing_may_happen):
        _refused(capsys, args, "model name")
    assert not list(nothing_may_happen.rglob("registry.db"))  # nothing recorded either


@pytest.mark.parametrize("bad", ["../1.0", "1/0", "1..0", "1.0\n", "", "_1", "１.０"], ids=short_id)
def test_every_command_refuses_a_bad_version_first(nothing_may_happen, capsys, bad):
    for args in _version_commands(bad):
        _refused(capsys, args, "version")
    assert not list(nothing_may_happen.rglob("registry.db"))


def test_deploy_dot_dot_name_reads_and_registers_nothing(nothing_may_happen, capsys):
    """The reported case: `deploy ../probemm --version 1.0` verified ./probemm-1.0.mar, then
    registered model_store/probemm-1.0.mar under the name `../probemm`."""
    project = nothing_may_happen
    (project / "ms").mkdir()
    for where in (project, project / "ms"):
        (where / "probemm-1.0.mar").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert main(["deploy", "../probemm", "--version", "1.0"]) == 7
    err = capsys.readouterr().err
    assert err == (
        "error: invalid model name '../probemm': letters, digits, '_', '-' and '.', starting with a "
        "letter or digit, no '..', at most 128 characters\n"
    )


def test_desired_state_files_follow_the_rule(nothing_may_happen, capsys):
    project = nothing_may_happen
    for i, (model, versions) in enumerate(
        [("../x", '["1.0"]'), ("ok", '["../1.0"]'), ("ok", '["1.0\\n"]'), ("ok", "[null]"), ("a/b", '["1.0"]')]
    ):
        f = project / f"deploy{i}.yaml"
        f.write_text(f'models:\n  "{model}":\n    versions: {versions}\n')
        for args in (
            ["plan", str(f)],
            ["apply", str(f)],
            ["export", "k8s", "--deploy", str(f), "--out", str(project / "out")],
        ):
            assert main(args) == 7, (args, f.read_text())
            err = capsys.readouterr().err
            assert err.startswith(f"error: {f}: ") and "invalid" in err and err.count("\n") == 1, err
    assert not (project / "out").exists()
