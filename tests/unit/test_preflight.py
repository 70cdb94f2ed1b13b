"""The import check before packaging a handler: every import read, every missing module named with its fix."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

from torchship.archiver import ArchiveSpec
from torchship.archiver.errors import ArchiveError
from torchship.archiver.preflight import check_imports, scan_imports
from torchship.cli import main

HANDLE = "def handle(data, context):\n    return data\n"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
needs_no_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here"
)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def sites(text: str) -> dict[str, tuple[bool, bool]]:
    """{statement: (optional, relative)}"""
    return {s.statement: (s.optional, s.relative) for s in scan_imports(textwrap.dedent(text), "h.py")}


# ------------------------------------------------------------------ reading the imports


def test_every_import_statement_is_found_with_its_top_level_name():
    found = scan_imports("import a.b.c, d as e\nfrom f.g import h\nfrom __future__ import annotations\n", "h.py")
    assert [(s.name, s.line) for s in found] == [("a", 1), ("d", 1), ("f", 2), ("__future__", 3)]
    assert found[2].statement == "from f.g import h" and found[2].where == "h.py line 2"


def test_imports_inside_functions_and_classes_count_as_required():
    assert sites(
        """
        class H:
            def handle(self, data, context):
                import lazy_module
                from other.sub import thing
        """
    ) == {"import lazy_module": (False, False), "from other.sub import thing": (False, False)}


def test_an_import_guarded_by_except_import_error_is_optional_and_its_fallback_too():
    assert sites(
        """
        try:
            import ujson as json
        except ImportError:
            import json
        try:
            from fast import thing
        except (ValueError, ModuleNotFoundError):
            thing = None
        try:
            import needed
        except ValueError:
            pass
        else:
            import after
        """
    ) == {
        "import ujson as json": (True, False),
        "import json": (True, False),
        "from fast import thing": (True, False),
        "import needed": (False, False),
        "import after": (False, False),
    }


def test_type_checking_imports_never_run():
    assert sites(
        """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import only_for_mypy
        else:
            import at_run_time
        """
    ) == {"from typing import TYPE_CHECKING": (False, False), "import at_run_time": (False, False)}


def test_relative_imports_are_marked():
    assert sites(
        "from . import model\nfrom .model import Net\ntry:\n    from ..x import y\nexcept ImportError:\n    pass\n"
    ) == {
        "from . import model": (False, True),
        "from .model import Net": (False, True),
        "from ..x import y": (True, True),
    }


def test_a_syntax_error_names_file_and_line():
    with pytest.raises(ArchiveError, match=r"h.py line 2: .*cannot be imported"):
        scan_imports("import os\ndef broken(:\n", "h.py")


# ------------------------------------------------------------------ the check in the server's Python


@needs_no_torchvision
def test_each_missing_module_is_named_with_where_and_how_to_add_it(tmp_path):
    write(tmp_path, "helper.py", "VALUE = 1\n")
    handler = write(
        tmp_path,
        "h.py",
        """
        import json
        from torchvision import transforms
        import cv2
        from helper import VALUE
        import torchship_oip

        def handle(data, context):
            import no_such_module_xyz
            return data
        """,
    )
    with pytest.raises(ArchiveError) as info:
        check_imports(ArchiveSpec("h", "1.0", handler))
    text = str(info.value)
    assert text.startswith("the server's Python (")
    for named in (
        "torchvision (h.py line 3)",
        "cv2 (h.py line 4)",
        "helper (h.py line 5)",
        "no_such_module_xyz (h.py line 9)",
    ):
        assert named in text
    assert "-m pip install torchvision opencv-python no_such_module_xyz, and list them in --requirements" in text
    assert f"--extra-file {tmp_path / 'helper.py'}" in text  # beside the handler: pack it
    assert "handlers/torchship_oip.py" in text  # torchship's own helper: pack it too
    assert text.endswith("Nothing was packaged")
    assert "json (" not in text  # the standard library is present


@needs_no_torchvision
def test_a_module_already_in_the_requirements_is_said_so(tmp_path):
    handler = write(tmp_path, "h.py", "import torchvision\ndef handle(data, context):\n    return data\n")
    with pytest.raises(ArchiveError, match=r"pip install torchvision \(already listed in the requirements file\)"):
        check_imports(ArchiveSpec("h", "1.0", handler), requirements=["torchvision>=0.20"])


def test_files_of_the_archive_count_as_present_and_optional_absences_are_noted(tmp_path):
    write(tmp_path, "my_model.py", "import torch\nclass Net(torch.nn.Module):\n    pass\n")
    write(tmp_path, "helpers.py", "def f():\n    return 1\n")
    handler = write(
        tmp_path,
        "h.py",
        """
        from my_model import Net
        import helpers
        try:
            import no_such_accelerator
        except ImportError:
            no_such_accelerator = None

        def handle(data, context):
            return data
        """,
    )
    report = check_imports(
        ArchiveSpec("h", "1.0", handler, model_file=tmp_path / "my_model.py", extra_files=(tmp_path / "helpers.py",))
    )
    assert "torch" in report.found and report.seconds > 0
    assert report.notes == (
        "optional import no_such_accelerator (h.py line 5) is not installed in the server's Python: skipped",
    )


def test_a_relative_import_fails_with_the_absolute_spelling(tmp_path):
    write(tmp_path, "model.py", "X = 1\n")
    handler = write(tmp_path, "h.py", "from .model import X\ndef handle(data, context):\n    return data\n")
    with pytest.raises(
        ArchiveError, match=r"h.py line 1: `from .model import X` is a relative import.*write `from model import X`"
    ):
        check_imports(ArchiveSpec("h", "1.0", handler, extra_files=(tmp_path / "model.py",)))


def test_the_real_import_catches_what_reading_cannot(tmp_path):
    # a module of the archive that imports a missing one: named, with the line that imports it
    write(tmp_path, "helper.py", "import no_such_dependency_xyz\n")
    handler = write(tmp_path, "h.py", "import helper\ndef handle(data, context):\n    return data\n")
    spec = ArchiveSpec("h", "1.0", handler, extra_files=(tmp_path / "helper.py",))
    with pytest.raises(ArchiveError, match=r"no_such_dependency_xyz \(helper.py line 1\)"):
        check_imports(spec)
    # an exception while the handler is imported
    handler = write(tmp_path, "h.py", "import json\nraise ValueError('no config found')\n")
    with pytest.raises(
        ArchiveError, match=r"importing the handler h.py failed \(h.py line 2\): ValueError: no config found"
    ):
        check_imports(ArchiveSpec("h", "1.0", handler))


def test_a_module_missing_inside_a_dependency_is_named_with_the_chain(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "dep").mkdir(parents=True)
    (site / "dep" / "__init__.py").write_text("import no_such_indirect_xyz\n")
    monkeypatch.setenv("PYTHONPATH", str(site))  # the server's environment has `dep`, which lacks its own import
    folder = tmp_path / "model"
    folder.mkdir()
    handler = write(folder, "h.py", "import dep\nimport torch.no_such_sub\n" + HANDLE)
    with pytest.raises(
        ArchiveError, match=r"no_such_indirect_xyz \(needed by dep/__init__.py line 1, which h.py line 1"
    ):
        check_imports(ArchiveSpec("h", "1.0", handler))
    handler = write(folder, "h.py", "import torch.no_such_sub\n" + HANDLE)  # a package without that submodule
    with pytest.raises(
        ArchiveError, match=r"failed \(h.py line 1\): ModuleNotFoundError: No module named 'torch.no_such"
    ):
        check_imports(ArchiveSpec("h", "1.0", handler))


@needs_no_torchvision
def test_torchserves_own_image_classifier_base_is_named_for_what_it_lacks(tmp_path):
    # the classic stock handler: ts.torch_handler.image_classifier imports torchvision itself
    handler = write(tmp_path, "h.py", "from ts.torch_handler.image_classifier import ImageClassifier\n")
    with pytest.raises(ArchiveError, match=r"torchvision \(needed by torch_handler/.*, which h.py line 1 imports\)"):
        check_imports(ArchiveSpec("h", "1.0", handler))


def test_the_handler_must_be_what_torchserve_looks_for(tmp_path):
    handler = write(tmp_path, "h.py", "class A:\n    pass\nclass B:\n    def handle(self, d, c):\n        return d\n")
    with pytest.raises(
        ArchiveError, match=r"the handler h.py has no handle\(data, context\) function and defines 2 classes \(A, B\)"
    ):
        check_imports(ArchiveSpec("h", "1.0", handler))
    handler = write(
        tmp_path, "h.py", "from ts.torch_handler.base_handler import BaseHandler\nclass Mine(BaseHandler):\n    pass\n"
    )
    assert check_imports(ArchiveSpec("h", "1.0", handler)).found == ("ts",)


def test_a_handler_that_ends_the_process_at_import_is_refused(tmp_path):
    handler = write(tmp_path, "h.py", "import os\nprint('bye')\nos._exit(3)\n")
    with pytest.raises(ArchiveError, match=r"importing h.py ended the server's Python \(exit status 3\): bye"):
        check_imports(ArchiveSpec("h", "1.0", handler))


def test_a_handler_that_hangs_at_import_times_out(tmp_path):
    handler = write(tmp_path, "h.py", "import time\ntime.sleep(60)\n")
    with pytest.raises(ArchiveError, match=r"importing h.py in the server's Python did not finish within 2 s"):
        check_imports(ArchiveSpec("h", "1.0", handler), timeout=2)


def test_the_check_writes_nothing_into_the_users_folder(tmp_path):
    write(tmp_path, "helper.py", "X = 1\n")
    handler = write(
        tmp_path,
        "h.py",
        """
        import helper
        open("written-at-import.txt", "w").write("x")
        def handle(data, context):
            return data
        """,
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    check_imports(ArchiveSpec("h", "1.0", handler, extra_files=(tmp_path / "helper.py",)))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no __pycache__, no file it wrote


def test_stock_style_fixture_passes_and_the_torchvision_one_does_not():
    spec = ArchiveSpec(
        "stock",
        "1.0",
        FIXTURES / "stock_image_handler.py",
        model_file=FIXTURES / "stock_image_model.py",
        extra_files=(FIXTURES / "index_to_name.json",),
    )
    assert {"torch", "PIL", "ts"} <= set(check_imports(spec).found)
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ArchiveError, match="torchvision"):
            check_imports(ArchiveSpec("tv", "1.0", FIXTURES / "torchvision_handler.py"))


# ------------------------------------------------------------------ the command line


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "config.properties").write_text("model_store=ms\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHSHIP_HOME", raising=False)
    return tmp_path


@needs_no_torchvision
def test_package_names_the_missing_module_in_one_line_and_builds_nothing(project, capsys):
    handler = write(
        project, "vision.py", "from torchvision import transforms\ndef handle(data, context):\n    return data\n"
    )
    assert main(["package", "--handler", str(handler), "--name", "vision", "--version", "1.0"]) == 8
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: the server's Python (")
    assert "lacks a module that the archive's code needs: torchvision (vision.py line 1)" in err
    assert "-m pip install torchvision, and list it in --requirements. Nothing was packaged" in err
    assert not (project / "ms").exists() or not list((project / "ms").iterdir())


@needs_no_torchvision
def test_no_import_check_builds_it_anyway(project, capsys):
    handler = write(
        project, "vision.py", "from torchvision import transforms\ndef handle(data, context):\n    return data\n"
    )
    args = ["package", "--handler", str(handler), "--name", "vision", "--version", "1.0", "--no-import-check"]
    assert main(args) == 0
    assert (project / "ms" / "vision-1.0.mar").is_file()


def test_package_options_that_need_a_handler(project, capsys):
    (project / "r.txt").write_text("numpy\n")
    assert main(["package", "mlp", "--requirements", str(project / "r.txt")]) == 2
    assert "--requirements and --no-import-check go with --handler" in capsys.readouterr().err


def test_optional_absences_are_printed_as_notes(project, capsys):
    handler = write(
        project,
        "h.py",
        "try:\n    import no_such_speedup\nexcept ImportError:\n    pass\n" + HANDLE,
    )
    assert main(["package", "--handler", str(handler), "--name", "h", "--version", "1.0"]) == 0
    err = capsys.readouterr().err
    assert "note: optional import no_such_speedup (h.py line 2) is not installed in the server's Python" in err
