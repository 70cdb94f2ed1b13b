"""torchship's handler base, packed beside a handler of your own that imports it.

A worker imports each archive file as a top-level module, so a handler built on the base imports it
flat (`from torchship_base_handler import BatchHandler, ItemError`), and the base imports its helpers
the same way (`torchship_models`, `torchship_oip`). `with_handler_base` reads the imports of every
Python file going into the archive, and of each helper it adds, and packs the helpers they need from
`torchship.handlers` (HANDLER_DIR), unless the archive already has a file of that name (your own copy
wins). The import check then finds them in the archive, as the worker will.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torchship.handlers import HANDLER_DIR

from .errors import ArchiveError
from .preflight import scan_imports
from .spec import ArchiveSpec

__all__ = ["BASE_MODULES", "base_modules_needed", "with_handler_base"]

# the base and its helpers: the handler files whose names no example handler or user file should take
BASE_MODULES = (
    "torchship_base_handler",
    "torchship_capture",
    "torchship_drift",
    "torchship_image",
    "torchship_models",
    "torchship_oip",
    "torchship_signals",
    "torchship_text",
)


def base_modules_needed(spec: ArchiveSpec) -> tuple[Path, ...]:
    """The files of torchship's handler base that `spec`'s Python files import (at any depth, also
    through one another) and that the archive does not already hold, in name order."""
    packed = {Path(p).name for _, p in spec.files()}
    queue = [Path(p) for _, p in spec.files() if Path(p).suffix == ".py"]
    added: dict[str, Path] = {}
    while queue:
        path = queue.pop()
        try:
            sites = scan_imports(path.read_text(encoding="utf-8"), path.name)
        except (OSError, UnicodeDecodeError, ArchiveError):
            continue  # the import check names what is wrong with the file
        for site in sites:
            file_name = f"{site.name}.py"
            if site.relative or site.name not in BASE_MODULES or file_name in packed or file_name in added:
                continue
            source = HANDLER_DIR / file_name
            if source.is_file():
                added[file_name] = source
                queue.append(source)
    return tuple(added[name] for name in sorted(added))


def with_handler_base(spec: ArchiveSpec) -> tuple[ArchiveSpec, tuple[Path, ...]]:
    """`spec` with the handler base files it needs added to its extra files, and those files."""
    needed = base_modules_needed(spec)
    if not needed:
        return spec, ()
    return dataclasses.replace(spec, extra_files=tuple(spec.extra_files) + needed), needed
