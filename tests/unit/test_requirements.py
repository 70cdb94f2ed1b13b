"""An archive's requirements file: requirements only, recorded in the provenance, checked at deploy, never installed."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from torchship import archiver
from torchship.archiver import ArchiveSpec
from torchship.archiver.errors import ArchiveError
from torchship.archiver.requirements import Environment, ensure_requirements_met, installed, parse_requirements, unmet
from torchship.cli import main

HANDLER = "def handle(data, context):\n    return data\n"


# ------------------------------------------------------------------ parsing


def test_requirements_are_normalised_comments_and_continuations_skipped():
    text = """
    # what the model needs
    numpy >= 1.26   # arrays
    torch>=2.0,<3 \\
        ; python_version >= "3.10"
    Pillow[extra]
    requests==2.*
    """
    assert parse_requirements(text) == [
        "numpy>=1.26",
        'torch<3,>=2.0; python_version >= "3.10"',
        "Pillow[extra]",
        "requests==2.*",
    ]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("-r base.txt", "is a pip option"),
        ("-e .", "is a pip option"),
        ("--index-url https://example.org/simple", "is a pip option"),
        ("-c constraints.txt", "is a pip option"),
        ("numpy @ https://example.org/numpy.whl", "is a URL or a path"),
        ("git+https://github.com/x/y", "is a URL or a path"),
        ("./local/pkg", "is a URL or a path"),
        ("/abs/pkg.whl", "is a URL or a path"),
        ("numpy==1.0 --hash=sha256:abc", "pip options such as --hash are not accepted"),
        ("numpy=1.0", "is not a valid requirement"),
    ],
)
def test_what_is_not_a_requirement_is_refused_with_its_line(line, why):
    with pytest.raises(ArchiveError, match=rf"^reqs.txt line 2: .*{why.replace('-', '.')}"):
        parse_requirements(f"numpy\n{line}\n", source="reqs.txt")


# ------------------------------------------------------------------ against an environment

ENV = Environment("py", {"numpy": "2.2.1", "torch": "2.13.0", "pillow": "11.0.0"}, {"sys_platform": "linux"})


def test_unmet_lists_what_is_missing_or_at_the_wrong_version():
    reqs = ["numpy<1.0", "torch>=2.0", "torchvision", "Pillow>=10", "winonly; sys_platform == 'win32'"]
    assert unmet(reqs, ENV) == ["numpy<1.0 (2.2.1 installed)", "torchvision (not installed)"]


def test_the_environment_is_read_from_the_interpreter():
    env = installed()
    assert "torch" in env.distributions and env.markers["python_version"].count(".") == 1


# ------------------------------------------------------------------ in the archive, and at deploy


def build(tmp_path: Path, version: str, requirements: str | None) -> Path:
    handler = tmp_path / "h.py"
    handler.write_text(HANDLER)
    reqs = None
    if requirements is not None:
        reqs = tmp_path / f"requirements-{version}.txt"
        reqs.write_text(requirements)
    spec = ArchiveSpec("h", version, handler, requirements=reqs)
    return archiver.package(spec, tmp_path / "store", tmp_path / "keys").path


def test_requirements_are_packed_and_recorded_in_the_provenance(tmp_path):
    path = build(tmp_path, "1.0", "numpy>=1.0\ntorch >= 2.0\n")
    report = archiver.ensure_verified(path, public_key=archiver.public_key_path(tmp_path / "keys"))
    assert report.provenance["requirements"] == ["numpy>=1.0", "torch>=2.0"]
    with zipfile.ZipFile(path) as z:
        assert json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["requirementsFile"] == "requirements-1.0.txt"
    assert ensure_requirements_met(path) == ["numpy>=1.0", "torch>=2.0"]
    # without a requirements file the provenance has no such field (older builds stay identical)
    assert (
        "requirements"
        not in archiver.ensure_verified(
            build(tmp_path, "2.0", None), public_key=archiver.public_key_path(tmp_path / "keys")
        ).provenance
    )


def test_an_invalid_requirements_file_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(ArchiveError, match="line 1: '-r other.txt' is a pip option"):
        build(tmp_path, "1.0", "-r other.txt\n")
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").iterdir())


def test_deploy_time_check_refuses_with_the_list(tmp_path):
    path = build(tmp_path, "1.0", "numpy<1.0\ntorchvision\ntorch>=2.0\n")
    with pytest.raises(ArchiveError) as info:
        ensure_requirements_met(path)
    text = str(info.value)
    assert text.startswith("refusing h-1.0.mar: the server's Python (")
    assert "does not meet its requirements (requirements-1.0.txt): numpy<1.0 (" in text
    assert "installed), torchvision (not installed). Install them" in text
    assert "-m pip install 'numpy<1.0' torchvision)" in text and text.endswith("Nothing was registered")


def test_an_archive_without_requirements_runs_nothing(tmp_path, monkeypatch):
    from torchship.archiver import requirements

    monkeypatch.setattr(requirements, "run_probe", lambda *a, **k: pytest.fail("probe ran"))
    assert ensure_requirements_met(build(tmp_path, "1.0", None)) == []


def test_deploy_refuses_before_the_server_is_asked(tmp_path):
    from torchship.ops.deploy import deploy

    class NoServer:
        def __getattr__(self, name):
            raise AssertionError(f"the server was asked: {name}")

    build(tmp_path, "1.0", "numpy<1.0\n")
    with pytest.raises(ArchiveError, match=r"numpy<1.0 \(.* installed\)"):
        deploy(NoServer(), tmp_path / "store", "h", "1.0", public_key=archiver.public_key_path(tmp_path / "keys"))  # type: ignore[arg-type]


def test_cli_package_records_requirements_and_verify_shows_them(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.properties").write_text("model_store=ms\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)
    (tmp_path / "h.py").write_text(HANDLER)
    (tmp_path / "requirements.txt").write_text("numpy\n")
    args = ["package", "--handler", "h.py", "--name", "h", "--version", "1.0", "--requirements", "requirements.txt"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["verify", "ms/h-1.0.mar"]) == 0
    assert "requirements (checked against the server's Python at deploy): numpy" in capsys.readouterr().out
    (tmp_path / "bad.txt").write_text("numpy\nhttps://example.org/x.whl\n")
    args[-1], args[6] = "bad.txt", "2.0"
    assert main(args) == 8
    err = capsys.readouterr().err
    url = "https://example.org/x.whl"
    assert err == f"error: bad.txt line 2: {url!r} is a URL or a path: only named requirements are accepted\n"
