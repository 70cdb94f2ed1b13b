"""The journey of a user with their own model, as they live it: torchship built into an sdist and a
wheel, pip-installed into a new virtual environment outside the repository, then `torchship init`,
the scaffold's train.py, package, serve, deploy, predict, a second version rolled out, history.

Nothing here runs from the checkout: every command is the installed `torchship` of that
environment, in a project folder of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torchship.ops.server import free_ports

from .conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GENERIC = {"archiver", "train", "handlers", "tests", "scripts", "benchmarks"}


def run(args, *, cwd, timeout=600, check=True):
    r = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


def tracked_tree(dest: Path) -> Path:
    """What a clone would hold (tracked files, and new ones git does not ignore), links kept as links."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        src, out = ROOT / name, dest / name
        if not src.is_symlink() and not src.is_file():
            continue  # deleted in the working tree
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out, follow_symlinks=False)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A new virtual environment with torchship installed from a wheel built from the sdist."""
    work = tmp_path_factory.mktemp("journey")
    src = tracked_tree(work / "src")
    dist = work / "dist"
    build_sdist = f"from setuptools import build_meta as b; print(b.build_sdist({str(dist)!r}))"
    sdist = dist / run([sys.executable, "-c", build_sdist], cwd=src).stdout.strip().splitlines()[-1]
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, sdist], cwd=work)
    [wheel] = dist.glob("torchship-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=work)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=work, timeout=1200)
    return venv, wheel


def test_the_wheel_installs_one_package_and_nothing_generic(installed):
    venv, wheel = installed
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps(sorted({str(f).split('/')[0] for f in m.files('torchship')})))"
    )
    tops = set(json.loads(run([venv / "bin" / "python", "-c", code], cwd=venv).stdout))
    assert tops - {".."} == {"torchship", "torchship-0.1.0.dist-info"}, tops  # "..": the console script
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not GENERIC & {p.name for p in site.iterdir()}
    # the layers, the templates and the handler base are inside it
    code = (
        "import torchship.archiver, torchship.handlers, torchship.train, pathlib; "
        "h = torchship.handlers.HANDLER_DIR; "
        "print((h / 'torchship_base_handler.py').is_file(), pathlib.Path(torchship.archiver.__file__).parent.name)"
    )
    assert run([venv / "bin" / "python", "-c", code], cwd=venv).stdout.split() == ["True", "archiver"]


def free_port_config(project: Path) -> None:
    """Give the project's config free ports, as a user would edit it (the suite's servers run beside it)."""
    path = project / "config.properties"
    ports = iter(free_ports(5))
    values = {
        "inference_address": f"http://127.0.0.1:{next(ports)}",
        "management_address": f"http://127.0.0.1:{next(ports)}",
        "metrics_address": f"http://127.0.0.1:{next(ports)}",
        "grpc_inference_port": str(next(ports)),
        "grpc_management_port": str(next(ports)),
    }
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if key in values and not line.lstrip().startswith("#"):
            lines[i] = f"{key}={values.pop(key)}"
    assert not values, f"config.properties lacks {sorted(values)}"
    path.write_text("\n".join(lines) + "\n")


def test_your_own_model_from_init_to_a_rolled_out_second_version(installed, tmp_path_factory):
    venv, _ = installed
    ts, python = venv / "bin" / "torchship", venv / "bin" / "python"
    project = tmp_path_factory.mktemp("shop")
    out = run([ts, "init", "--name", "shop"], cwd=project).stdout
    assert "torchship package shop --version 1.0" in out
    for name in ("config.properties", "log4j2.xml", "deploy.yaml", "torchship.yaml", "model.py", "train.py"):
        assert (project / name).is_file(), name
    free_port_config(project)

    out = run([python, "train.py"], cwd=project).stdout
    assert "trained shop" in out
    out = run([ts, "package", "shop", "--version", "1.0"], cwd=project).stdout
    assert "model_store/shop-1.0.mar" in out and "packed torchship's handler base" in out
    try:
        run([ts, "serve", "start"], cwd=project, timeout=180)
        run([ts, "apply", "deploy.yaml"], cwd=project, timeout=300)
        answer = json.loads(
            run([ts, "predict", "shop", "--json", '{"features": [0.5, -1.2, 0.3, 2.0]}'], cwd=project).stdout
        )
        assert answer["class_id"] in range(len(answer["probabilities"]))
        assert abs(sum(answer["probabilities"].values()) - 1) < 1e-3
        bad = run([ts, "predict", "shop", "--json", '{"features": [1]}'], cwd=project, check=False)
        assert bad.returncode == 7 and "400" in bad.stderr  # a bad request is the caller's error, one line

        # a second version: trained again, packaged, judged on the golden set train.py wrote, promoted
        run([python, "train.py", "--seed", "1"], cwd=project)
        run([ts, "package", "shop", "--version", "2.0"], cwd=project)
        out = run([ts, "rollout", "shop", "--version", "2.0"], cwd=project, timeout=300).stdout
        assert "shop 2.0 is the default" in out
        described = run([ts, "describe", "shop", "--json"], cwd=project).stdout
        assert json.loads(described)[0]["version"] == "2.0"

        history = json.loads(run([ts, "history", "shop", "--json"], cwd=project).stdout)
        versions = {v["version"]: v for v in history["versions"]}
        assert set(versions) == {"1.0", "2.0"}
        runs = {v["checkpoint_run"] for v in versions.values()}
        assert len(runs) == 2 and None not in runs  # each version names the training run it came from
        assert all(v["metrics"] for v in versions.values())
    finally:
        run([ts, "serve", "stop"], cwd=project, check=False)
