"""Before packaging a handler of your own: will its code import in the server's Python, as TorchServe imports it?

A worker unpacks the archive into a folder, puts that folder on its path and imports the handler by its
base name as a top-level module (`ts.model_loader`), then `BaseHandler` imports the model file the same
way. An import that fails there surfaces only at deploy, as a worker that will not start. So, before a
byte is written:

1. Every .py file that goes into the archive is read (not run) and each import statement found, at any
   depth (inside functions too: those fail at the first request instead). Modules that the archive's own
   files provide are present. An import inside `try: ... except ImportError` (or a fallback in its
   `except`) is optional: reported, never a failure. `if TYPE_CHECKING:` imports never run. A relative
   import (`from .model import Net`) cannot work in a top-level module: a failure.
2. In a child process of the server's Python, working in a throw-away copy of the archive's files,
   `importlib.util.find_spec` looks up each imported top-level name; then, when nothing required is
   missing, the handler and the model file are really imported (which catches the rest: an import that
   fails inside a dependency, an exception at import time) and the handler is checked for what
   `ts.model_loader` looks for: a module-level `handle` function, or exactly one class with `handle`.

Every missing module is named, with how to add it (the distribution to pip-install into the server's
environment and list in --requirements, or the file beside the handler to pack with --extra-file).
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from torchship.handlers import HANDLER_DIR

from .errors import ArchiveError
from .interpreter import run_probe, server_python
from .spec import ArchiveSpec

__all__ = ["ImportSite", "PreflightReport", "scan_imports", "provided_modules", "check_imports", "IMPORT_TIMEOUT"]

IMPORT_TIMEOUT = 120.0  # seconds for the whole check: importing torch takes 1-2 s, large libraries ~10 s
STAGE_MAX_BYTES = 16 << 20  # files copied for the import; larger ones (weights) are not read at import time
# import names whose distribution is named otherwise, for when the packaging machine does not have them
_DISTRIBUTIONS = {
    "cv2": "opencv-python",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "bs4": "beautifulsoup4",
    "attr": "attrs",
    "google.protobuf": "protobuf",
    "dateutil": "python-dateutil",
    "Crypto": "pycryptodome",
    "jwt": "pyjwt",
    "magic": "python-magic",
    "docx": "python-docx",
    "fitz": "pymupdf",
}
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
# (file, module): the handler base's import that runs for encrypted weights only (see check_imports)
_ENCRYPTED_ONLY = ("torchship_base_handler.py", "torchship_crypto")


@dataclass(frozen=True)
class ImportSite:
    """One import statement of a file: the top-level module it needs, and where it is."""

    name: str  # top-level module name ("" for `from . import x`)
    statement: str  # as Python reads it, on one line
    file: str
    line: int
    optional: bool  # inside try/except ImportError (or its fallback)
    relative: bool

    @property
    def where(self) -> str:
        """`file line N`, as messages say it."""
        return f"{self.file} line {self.line}"


@dataclass(frozen=True)
class PreflightReport:
    """What the check found: the interpreter asked, the modules found there, notes (optional imports that
    are absent), and how long it took."""

    python: str
    found: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float


def scan_imports(source: str, file: str) -> list[ImportSite]:
    """Every import statement of `source` (the text of `file`), in order. ArchiveError on a syntax error."""
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError as exc:
        raise ArchiveError(f"{file} line {exc.lineno}: {exc.msg}: it cannot be imported") from None
    sites: list[ImportSite] = []
    _visit(tree, False, file, sites)
    return sites


def provided_modules(names: Iterable[str]) -> set[str]:
    """Top-level modules that files of these names provide when they lie in the model's folder."""
    out = set()
    for name in names:
        if name.endswith(".py"):
            out.add(name[:-3])
        elif name.endswith((".so", ".pyd")):
            out.add(name.split(".")[0])
    return out


def check_imports(
    spec: ArchiveSpec,
    *,
    python: str | None = None,
    requirements: list[str] | None = None,
    timeout: float = IMPORT_TIMEOUT,
) -> PreflightReport:
    """Check that `spec`'s handler, model file and their imports load in `python` (default: the server's
    Python) as TorchServe will load them. ArchiveError naming every missing module and the fix otherwise.

    `requirements` (the parsed requirements file, if any) only shapes the hint.
    """
    started = time.monotonic()
    python = python or server_python()
    files = [(Path(p).name, Path(p)) for _, p in spec.files()]
    provided = provided_modules(name for name, _ in files)
    sites: list[ImportSite] = []
    problems: list[str] = []
    for name, path in files:
        if name.endswith(".py"):
            try:
                sites += scan_imports(path.read_text(encoding="utf-8"), name)
            except UnicodeDecodeError:
                problems.append(f"{name} is not UTF-8 text")
            except ArchiveError as exc:
                problems.append(str(exc))
    if _ENCRYPTED_ONLY[1] + ".py" not in {name for name, _ in files}:
        # the handler base imports torchship_crypto only to open encrypted weights, and torchship packs it
        # into every archive that has them: an archive without it never runs that import
        sites = [s for s in sites if (s.file, s.name) != _ENCRYPTED_ONLY]
    notes: list[str] = []
    for site in sites:
        if site.relative:
            fix = f"write `{_absolute(site.statement)}`"
            text = (
                f"{site.where}: `{site.statement}` is a relative import, and TorchServe imports each file "
                f"as a top-level module: {fix}"
            )
            (notes if site.optional else problems).append(text)
    wanted = sorted({s.name for s in sites if s.name and not s.relative} - provided)
    required = sorted({s.name for s in sites if s.name and not s.relative and not s.optional} - provided)
    modules = [["handler", spec.handler.name[:-3] if spec.handler.name.endswith(".py") else spec.handler.name]]
    if spec.model_file is not None and spec.model_file.name.endswith(".py"):
        modules.append(["model file", spec.model_file.name[:-3]])
    with tempfile.TemporaryDirectory(prefix="torchship-preflight-") as tmp:
        folder = Path(tmp)
        for name, path in files:  # a copy: nothing the import does can touch the user's files
            if name.endswith(".py") or path.stat().st_size <= STAGE_MAX_BYTES:
                shutil.copyfile(path, folder / name)
        answer = run_probe(
            python,
            _PROBE,
            # the real import only when reading found nothing wrong (it would stop at the first problem)
            {"names": wanted, "required": required, "modules": modules, "import": not problems},
            folder=folder,
            timeout=timeout,
            what=f"importing {spec.handler.name}",
        )
    found: dict[str, bool] = answer.get("found") or {}
    missing: dict[str, list[str]] = {}  # top-level name -> where it is imported
    for site in sites:
        if site.name in required and not found.get(site.name, False):
            missing.setdefault(site.name, []).append(site.where)
    optional_absent = sorted({s.name for s in sites if s.optional and s.name in wanted and not found.get(s.name)})
    for name in optional_absent:
        if name not in missing:
            where = ", ".join(s.where for s in sites if s.name == name)
            notes.append(f"optional import {name} ({where}) is not installed in the server's Python: skipped")
    for entry in answer.get("imports") or []:
        role, module = entry.get("role"), entry.get("module")
        name = str(entry.get("missing") or "")
        if name and "." not in name and name not in provided:  # (a submodule that a package lacks is an error)
            where, via = entry.get("where"), entry.get("via")
            at = f"{where[0]} line {where[1]}" if where else f"{module}.py"
            missing.setdefault(name, []).append(f"needed by {via[0]} line {via[1]}, which {at} imports" if via else at)
            continue
        if entry.get("error"):
            where = entry.get("where")
            at = f" ({where[0]} line {where[1]})" if where else ""
            problems.append(f"importing the {role} {module}.py failed{at}: {entry['error']}")
        if entry.get("entry"):
            problems.append(f"the {role} {module}.py {entry['entry']}")
    if not answer.get("done"):  # the process ended in the middle (os._exit, a crash in native code)
        output = str(answer.get("_output") or "").strip()
        last = f": {output.splitlines()[-1]}" if output else ""
        problems.append(
            f"importing {spec.handler.name} ended the server's Python (exit status {answer.get('_returncode')}){last}"
        )
    if missing:
        problems.insert(0, _missing_text(missing, spec, python, requirements))
    if problems:
        raise ArchiveError("; ".join(problems) + ". Nothing was packaged")
    found_names = tuple(sorted(name for name, ok in found.items() if ok))
    return PreflightReport(python, found_names, tuple(notes), time.monotonic() - started)


# ------------------------------------------------------------------ the pieces


def _visit(node: ast.AST, optional: bool, file: str, sites: list[ImportSite]) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            statement = ast.unparse(ast.Import(names=[alias]))
            sites.append(ImportSite(alias.name.split(".")[0], statement, file, node.lineno, optional, False))
        return
    if isinstance(node, ast.ImportFrom):
        top = (node.module or "").split(".")[0]
        sites.append(ImportSite(top, ast.unparse(node), file, node.lineno, optional, node.level > 0))
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.orelse:  # the body never runs
            _visit(child, optional, file, sites)
        return
    if isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
        guarded = optional or any(_catches_import_error(h) for h in node.handlers)  # type: ignore[attr-defined]
        for child in node.body:  # type: ignore[attr-defined]
            _visit(child, guarded, file, sites)
        for handler in node.handlers:  # type: ignore[attr-defined]
            # a fallback (`except ImportError: import json`): needed only when the first one is absent,
            # and then the real import in the server's Python says whether it loads
            for child in handler.body:
                _visit(child, guarded, file, sites)
        for child in [*node.orelse, *node.finalbody]:  # type: ignore[attr-defined]
            _visit(child, optional, file, sites)
        return
    for inner in ast.iter_child_nodes(node):
        _visit(inner, optional, file, sites)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type
    if kinds is None:
        return True
    for kind in kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]:
        name = kind.id if isinstance(kind, ast.Name) else kind.attr if isinstance(kind, ast.Attribute) else None
        if name in _IMPORT_ERRORS:
            return True
    return False


def _absolute(statement: str) -> str:
    """`from .model import Net` -> `from model import Net`; `from . import model` -> `import model`."""
    match = re.fullmatch(r"from \.+(\S*) import (.+)", statement)
    if match is None:
        return statement
    module, names = match.groups()
    return f"from {module} import {names}" if module else f"import {names}"


def _missing_text(missing: dict[str, list[str]], spec: ArchiveSpec, python: str, requirements: list[str] | None) -> str:
    """One sentence per kind of fix: files to pack, distributions to install."""
    beside_dirs = [spec.handler.parent] + ([spec.model_file.parent] if spec.model_file else [])
    pack: list[tuple[str, Path]] = []
    install: list[tuple[str, str]] = []  # (import name, distribution)
    for name in missing:
        local = next((d / f"{name}.py" for d in [*beside_dirs, HANDLER_DIR] if (d / f"{name}.py").is_file()), None)
        if local is not None:
            pack.append((name, local))
        else:
            install.append((name, _distribution(name)))
    named = ", ".join(f"{name} ({'; '.join(dict.fromkeys(where))})" for name, where in missing.items())
    plural = len(missing) > 1
    parts = [
        f"the server's Python ({python}) lacks {'modules' if plural else 'a module'} that the archive's code "
        f"needs: {named}"
    ]
    if pack:
        files = " ".join(f"--extra-file {path}" for _, path in pack)
        parts.append(f"pack {'them' if len(pack) > 1 else 'it'} into the archive: {files}")
    if install:
        dists = list(dict.fromkeys(d for _, d in install))
        them = "them" if len(dists) > 1 else "it"
        listed = {_canonical(r) for r in requirements or []}
        also = (
            " (already listed in the requirements file)"
            if listed and all(_canonical(d) in listed for d in dists)
            else f", and list {them} in --requirements"
        )
        parts.append(f"install {them} into the server's environment: {python} -m pip install {' '.join(dists)}{also}")
    return ". ".join(p[0].upper() + p[1:] if i else p for i, p in enumerate(parts))


def _distribution(name: str) -> str:
    """The distribution that provides import name `name`, when this interpreter's metadata knows it."""
    try:
        known = metadata.packages_distributions().get(name)
    except Exception:  # noqa: BLE001  broken metadata of some installed package: fall back to the table
        known = None
    if known:
        return known[0]
    return _DISTRIBUTIONS.get(name, name)


def _canonical(requirement: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        return canonicalize_name(requirement)


# Runs in the server's Python, in the throw-away copy of the model's folder: the standard library only.
_PROBE = r"""
import importlib, importlib.util, inspect, json, os, sys, traceback

request = json.load(open(sys.argv[1]))
answer = {"found": {}, "imports": []}

def save():
    with open(sys.argv[2], "w") as f:
        json.dump(answer, f)

folder = os.getcwd()
sys.path.insert(0, folder)  # a worker's PYTHONPATH starts with the model's folder
for name in request["names"]:
    try:
        answer["found"][name] = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        answer["found"][name] = False
save()
if request["import"] and all(answer["found"].get(n) for n in request["required"]):
    for role, module in request["modules"]:
        entry = {"role": role, "module": module}
        try:
            mod = importlib.import_module(module)
        except BaseException as exc:
            entry["error"] = (type(exc).__name__ + ": " + str(exc)).strip().rstrip(":")[:300]
            if isinstance(exc, ModuleNotFoundError) and exc.name:
                entry["missing"] = exc.name
            inside = lambda path: os.path.dirname(os.path.abspath(path)) == folder
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if inside(f.filename)]
            if isinstance(exc, SyntaxError) and exc.filename and inside(exc.filename):
                entry["where"] = [os.path.basename(exc.filename), exc.lineno]
            elif frames:
                entry["where"] = [os.path.basename(frames[-1].filename), frames[-1].lineno]
            deepest = traceback.extract_tb(exc.__traceback__)[-1:]
            if frames and deepest and not inside(deepest[0].filename):  # it failed inside a dependency
                entry["via"] = ["/".join(deepest[0].filename.split(os.sep)[-2:]), deepest[0].lineno]
        else:
            if role == "handler" and not hasattr(mod, "handle"):
                classes = [c for _, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == mod.__name__]
                if len(classes) != 1:
                    names = ", ".join(c.__name__ for c in classes) or "none"
                    entry["entry"] = (
                        "has no handle(data, context) function and defines %d classes (%s): TorchServe needs "
                        "the function, or exactly one class (the handler)" % (len(classes), names)
                    )
                elif not hasattr(classes[0], "handle"):
                    entry["entry"] = "defines class %s, which has no handle method" % classes[0].__name__
        answer["imports"].append(entry)
        save()
        if "error" in entry:
            break
answer["done"] = True
save()
"""
