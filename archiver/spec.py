"""What an archive is built from: a frozen, validated description."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchship.errors import ArchiveError

# TorchServe's own rule for model names; versions follow the same shape.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.\-]*$")


@dataclass(frozen=True)
class ArchiveSpec:
    name: str
    version: str
    handler: Path
    weights: Path | None = None
    model_file: Path | None = None
    extra_files: tuple[Path, ...] = ()
    model_config: dict[str, Any] = field(default_factory=dict, hash=False)
    requirements: Path | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name or ""):
            raise ArchiveError(f"invalid model name {self.name!r}: letters, digits, '_', '-' and '.', "
                               "starting with a letter or digit")
        if not VERSION_RE.match(self.version or "") or ".." in self.version:
            raise ArchiveError(f"invalid version {self.version!r}: e.g. 1.0 or 2.1-rc1")
        for label, path in self.files():
            if not Path(path).is_file():
                raise ArchiveError(f"{label} not found: {path}")
        names = [Path(p).name for _, p in self.files()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ArchiveError(f"two files would share the name {', '.join(duplicates)} in the archive")

    def files(self) -> list[tuple[str, Path]]:
        """(role, path) of every file that goes into the archive."""
        out = [("handler", self.handler)]
        if self.weights:
            out.append(("weights", self.weights))
        if self.model_file:
            out.append(("model file", self.model_file))
        out += [("extra file", p) for p in self.extra_files]
        if self.requirements:
            out.append(("requirements file", self.requirements))
        return out

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}.mar"
