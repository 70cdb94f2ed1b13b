"""What an archive is built from: a frozen, validated description."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArchiveError
from .names import InvalidName, check_name, check_version


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
        try:
            check_name(self.name)
            check_version(self.version)
        except InvalidName as exc:
            raise ArchiveError(str(exc)) from None
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
