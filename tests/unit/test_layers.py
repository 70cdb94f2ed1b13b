"""Imports point down only: torchship -> train -> archiver -> handlers (design.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what each layer may import of ours
ALLOWED = {
    "handlers": set(),
    "archiver": {"handlers"},
    "train": {"archiver", "handlers"},
    "torchship": {"train", "archiver", "handlers"},
}
OURS = set(ALLOWED)


def imported_packages(path: Path) -> set[str]:
    """Top-level names of our packages that a file imports, anywhere in it (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_runs_back_up(layer):
    bad = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        wrong = imported_packages(path) - ALLOWED[layer] - {layer}
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert bad == {}


def test_archiver_and_train_load_nothing_of_torchship():
    code = (
        "import sys, archiver, archiver.verify, archiver.derive, train, train.common, train.data; "
        "print(sorted(m for m in sys.modules if m == 'torchship' or m.startswith('torchship.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_torchship_reexports_the_lower_layers_errors():
    import archiver.errors
    import train.errors
    from torchship import errors

    assert errors.ArchiveError is archiver.errors.ArchiveError
    assert errors.VerificationError is archiver.errors.VerificationError
    assert errors.TrainingError is train.errors.TrainingError
    assert all(issubclass(e, errors.TorchServeError) for e in (errors.ArchiveError, errors.TrainingError))


def test_the_cli_starts_without_importing_torch():
    # every command pays for what `import torchship.cli` loads: torch alone took ~1.2 s of it
    code = "import sys, torchship.cli; print(sorted(m for m in ('torch', 'safetensors') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
