"""A stranger's handlers, through the CLI on a real server.

A handler written as TorchServe's docs and examples write one (a BaseHandler subclass, a `.pt` state_dict,
a model file, index_to_name.json) packages, verifies, deploys and answers unchanged. A handler whose import
fails (torchvision, absent here) is named at package time with the fix, and an archive built anyway with a
requirements file is refused at deploy time, nothing registered; requirements the server meets deploy.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchship import errors as E

from .conftest import ROOT

pytestmark = pytest.mark.integration
TORCHSHIP = str(Path(sys.executable).parent / "torchship")
FIXTURES = ROOT / "tests" / "fixtures"
no_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed in this environment"
)


def cli(server, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TORCHSHIP, "--config", str(server.effective_config_path), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
    )


def png(level: int, mode: str = "L", size: tuple[int, int] = (20, 14)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, level if mode == "L" else (level, level, level)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stock_weights(tmp_path_factory) -> Path:
    """A state_dict (torch.save) for stock_image_model.TinyCNN whose answer is known: the conv passes each
    pixel through, so the pooled feature is the image's mean brightness m in [0, 1], and the logits are
    (5 - 10m, 2, 10m - 5): dark below m ~0.3, grey in between, bright above ~0.7."""
    from tests.fixtures.stock_image_model import TinyCNN

    model = TinyCNN()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.zero_()
        model.conv.weight[:, 0, 1, 1] = 1.0
        model.fc.weight.zero_()
        model.fc.weight[:, 0] = torch.tensor([-10.0, 0.0, 10.0])
        model.fc.bias.copy_(torch.tensor([5.0, 2.0, -5.0]))
    path = tmp_path_factory.mktemp("stock") / "stock.pt"
    torch.save(model.state_dict(), path)
    return path


def expected(level: int) -> dict[str, float]:
    m = level / 255.0
    probs = torch.softmax(torch.tensor([5 - 10 * m, 2.0, 10 * m - 5]), dim=0)
    names = ["dark", "grey", "bright"]
    top = torch.topk(probs, 2)
    return {names[int(i)]: float(p) for p, i in zip(top.values, top.indices)}


def package_stock(server, name: str, weights: Path, *more: str | Path) -> subprocess.CompletedProcess[str]:
    return cli(
        server,
        "package",
        "--handler",
        FIXTURES / "stock_image_handler.py",
        "--name",
        name,
        "--version",
        "1.0",
        "--weights",
        weights,
        "--model-file",
        FIXTURES / "stock_image_model.py",
        "--extra-file",
        FIXTURES / "index_to_name.json",
        *more,
    )


def assert_not_registered(client, name: str) -> None:
    with pytest.raises(E.ModelNotFound):
        client.describe(name)


def test_a_stock_style_handler_packages_verifies_deploys_and_answers(server, client, stock_weights, tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy\ntorch>=2.0  # what the handler imports\n")
    r = package_stock(server, "stock", stock_weights, "--requirements", tmp_path / "requirements.txt")
    assert r.returncode == 0, r.stderr
    assert "signed: stock-1.0.mar.sig" in r.stdout
    archive = server.config().model_store / "stock-1.0.mar"

    r = cli(server, "verify", archive)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAILED" not in r.stdout
    assert "requirements (checked against the server's Python at deploy): numpy, torch>=2.0" in r.stdout

    r = cli(server, "deploy", "stock", "--version", "1.0")  # the requirements are met: it deploys
    assert r.returncode == 0, r.stderr
    try:
        image = tmp_path / "white.png"
        image.write_bytes(png(255, mode="RGB"))
        r = cli(server, "predict", "stock", "--file", image)  # raw PNG bytes, as a stock client sends them
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert max(answer, key=answer.get) == "bright"
        assert answer == pytest.approx(expected(255), abs=1e-5)
        for level, label in ((0, "dark"), (128, "grey")):
            answer = client.predict("stock", png(level))
            assert max(answer, key=answer.get) == label
            assert answer == pytest.approx(expected(level), abs=1e-5)
    finally:
        client.unregister("stock")


@no_torchvision
def test_a_handler_whose_import_fails_is_named_at_package_time(server, stock_weights):
    r = cli(
        server,
        "package",
        "--handler",
        FIXTURES / "torchvision_handler.py",
        "--name",
        "vision",
        "--version",
        "1.0",
        "--weights",
        stock_weights,
        "--model-file",
        FIXTURES / "stock_image_model.py",
    )
    assert r.returncode == 8
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "lacks a module that the archive's code needs: torchvision (torchvision_handler.py line 9)" in r.stderr
    assert f"Install it into the server's environment: {sys.executable} -m pip install torchvision" in r.stderr
    assert "list it in --requirements" in r.stderr
    assert not (server.config().model_store / "vision-1.0.mar").exists()


@no_torchvision
def test_deploy_refuses_an_archive_whose_requirements_the_server_lacks(server, client, stock_weights, tmp_path):
    (tmp_path / "requirements.txt").write_text("torchvision>=0.20\nnumpy\n")
    r = cli(
        server,
        "package",
        "--handler",
        FIXTURES / "torchvision_handler.py",
        "--name",
        "vision",
        "--version",
        "2.0",
        "--weights",
        stock_weights,
        "--model-file",
        FIXTURES / "stock_image_model.py",
        "--requirements",
        tmp_path / "requirements.txt",
        "--no-import-check",  # as if packaged on another machine, for this server
    )
    assert r.returncode == 0, r.stderr
    r = cli(server, "deploy", "vision", "--version", "2.0")
    assert r.returncode == 8, r.stdout + r.stderr
    assert r.stderr.startswith("error: refusing vision-2.0.mar: the server's Python (")
    assert "does not meet its requirements (requirements.txt): torchvision>=0.20 (not installed)." in r.stderr
    assert "-m pip install 'torchvision>=0.20')" in r.stderr and "Nothing was registered" in r.stderr
    assert_not_registered(client, "vision")


def test_a_requirement_at_the_wrong_version_is_refused(server, client, stock_weights, tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy<1.0\ntorch>=2.0\n")
    r = package_stock(server, "stockpin", stock_weights, "--requirements", tmp_path / "requirements.txt")
    assert r.returncode == 0, r.stderr  # it imports: only the version is wrong
    r = cli(server, "deploy", "stockpin", "--version", "1.0")
    assert r.returncode == 8, r.stdout + r.stderr
    import numpy

    assert f"numpy<1.0 ({numpy.__version__} installed)." in r.stderr
    assert "torch>=2.0 (" not in r.stderr  # met: not listed
    assert_not_registered(client, "stockpin")
