"""Imports point down only: torchship -> train -> archiver -> handlers (design.md).

The three lower layers are the repository's top-level folders archiver/, train/ and handlers/,
imported as torchship.archiver, torchship.train and torchship.handlers (torchship/ links to them):
one import package, nothing generic at the top level of site-packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOWER = ("handlers", "archiver", "train")
# what each layer may import of ours ("torchship": the library itself, everything else in torchship/)
ALLOWED = {
    "handlers": set(),
    "archiver": {"handlers"},
    "train": {"archiver", "handlers"},
    "torchship": {"train", "archiver", "handlers"},
}


def tracked_python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], capture_output=True, text=True, cwd=ROOT, check=True)
    return [ROOT / name for name in out.stdout.split()]


def layer_files(layer: str) -> list[Path]:
    if layer in LOWER:
        return sorted((ROOT / layer).rglob("*.py"))
    return sorted(p for p in (ROOT / "torchship").rglob("*.py") if p.relative_to(ROOT).parts[1] not in LOWER)


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "torchship":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LOWER else "torchship"


def imported_layers(path: Path) -> set[str]:
    """Our layers that a file imports, anywhere in it (lazy imports too)."""
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_layer_of(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "torchship":  # from torchship import archiver, Project
                found |= {_layer_of(f"torchship.{a.name}") for a in node.names}
            else:
                found.add(_layer_of(node.module))
    return {layer for layer in found if layer}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_runs_back_up(layer):
    bad = {}
    for path in layer_files(layer):
        wrong = imported_layers(path) - ALLOWED[layer] - {layer}
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert bad == {}


def test_nothing_imports_the_folders_by_their_bare_names():
    # `import archiver` would load a second copy of the layer (other classes, other errors), and
    # would not exist in an installed wheel: always torchship.archiver, torchship.train, ...
    bad = {}
    for path in tracked_python_files():
        if path.parent == ROOT / "handlers":
            continue  # handlers import each other flat, as the worker does (torchship_base_handler)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            wrong = [n for n in names if n.split(".")[0] in LOWER]
            if wrong:
                bad.setdefault(str(path.relative_to(ROOT)), []).extend(wrong)
    assert bad == {}


def test_the_links_point_at_the_top_level_folders():
    for layer in LOWER:
        link = ROOT / "torchship" / layer
        assert link.is_symlink() and link.resolve() == (ROOT / layer).resolve()


def test_archiver_and_train_load_nothing_of_torchship():
    code = (
        "import sys, torchship.archiver, torchship.archiver.verify, torchship.archiver.derive, "
        "torchship.train, torchship.train.common, torchship.train.data; "
        "print(sorted(m for m in sys.modules if m.startswith('torchship.') "
        "and m.split('.')[1] not in ('archiver', 'train', 'handlers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_torchship_reexports_the_lower_layers_errors():
    from torchship import errors
    from torchship.archiver import errors as archiver_errors
    from torchship.train import errors as train_errors

    assert errors.ArchiveError is archiver_errors.ArchiveError
    assert errors.VerificationError is archiver_errors.VerificationError
    assert errors.TrainingError is train_errors.TrainingError
    assert all(issubclass(e, errors.TorchServeError) for e in (errors.ArchiveError, errors.TrainingError))


def test_the_cli_starts_without_importing_torch():
    # every command pays for what `import torchship.cli` loads: torch alone took ~1.2 s of it
    code = "import sys, torchship.cli; print(sorted(m for m in ('torch', 'safetensors') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
