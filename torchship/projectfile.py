"""The project file, `torchship.yaml`: each model of your own, and what packages it.

It sits at the project's root (`ProjectPaths.project_file`); `torchship init` writes it, and
`torchship package NAME` reads it, so that NAME is the only argument needed::

    models:
      my-model:
        handler: handler.py                 # paths relative to the project root
        model_file: model.py
        checkpoints: checkpoints/my-model   # runs live under it; the newest complete run is packaged
        extra_files: []
        requirements: null
        encrypt: false                      # true: the weights are encrypted at rest (package --encrypt)

Only `handler` is required. Paths are relative to the project root and stay inside it; the files
must exist (the checkpoints folder may not yet: it appears with the first training run). Anything
else (an unknown key, a wrong type) is refused with the file and key named, before anything is done.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchship.archiver.names import InvalidName, check_name
from torchship.sdk.errors import ConfigError

__all__ = [
    "PROJECT_FILE",
    "ModelRecord",
    "ProjectFile",
    "InvalidProjectFileName",
    "load_project_file",
    "parse_project_file",
]

PROJECT_FILE = "torchship.yaml"
_KEYS = ("handler", "model_file", "checkpoints", "extra_files", "requirements", "encrypt")


class InvalidProjectFileName(ConfigError, InvalidName):
    """A model name in torchship.yaml outside the one rule (bad input: CLI exit 7)."""


@dataclass(frozen=True)
class ModelRecord:
    """One model of the project file, its paths resolved against the project root."""

    name: str
    handler: Path
    model_file: Path | None = None
    checkpoints: Path | None = None
    extra_files: tuple[Path, ...] = ()
    requirements: Path | None = None
    encrypt: bool = False


@dataclass(frozen=True)
class ProjectFile:
    """The parsed project file: where it is, and its models by name (none when there is no file)."""

    path: Path
    models: dict[str, ModelRecord] = field(default_factory=dict)


def load_project_file(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> ProjectFile:
    """Read and check a project file; a missing file holds no models.

    Paths in it are relative to `root` (default: the file's folder). ConfigError naming the file and key
    when it is not valid.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    if not path.exists():
        return ProjectFile(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_project_file(raw, root, path)


def parse_project_file(raw: Any, root: Path, path: Path) -> ProjectFile:
    """Check parsed YAML against the schema (see the module docstring); `path` names the file in errors."""
    if raw is None:
        return ProjectFile(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a top-level 'models:' key")
    unknown = sorted(str(k) for k in raw if k != "models")
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; the file holds 'models:'")
    models_raw = raw.get("models")
    if models_raw is None:
        return ProjectFile(path)
    if not isinstance(models_raw, dict):
        raise ConfigError(f"{path}: models: expected a mapping of model names to their files")
    models: dict[str, ModelRecord] = {}
    for name, entry in models_raw.items():
        try:
            check_name(name)
        except InvalidName as exc:
            raise InvalidProjectFileName(f"{path}: models: {exc}") from None
        models[name] = _record(name, entry, root, f"{path}: models.{name}")
    return ProjectFile(path, models)


def _record(name: str, entry: Any, root: Path, here: str) -> ModelRecord:
    if not isinstance(entry, dict):
        raise ConfigError(f"{here}: expected a mapping with {', '.join(_KEYS)}")
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if unknown:
        raise ConfigError(f"{here}: unknown key(s) {unknown}; known: {', '.join(_KEYS)}")
    if entry.get("handler") is None:
        raise ConfigError(f"{here}.handler: required: the handler file, e.g. handler.py")
    extra = entry.get("extra_files")
    if extra is None:
        extra = []
    if not isinstance(extra, list):
        raise ConfigError(f"{here}.extra_files: expected a list of paths, not {_kind(extra)}")
    written = entry.get("checkpoints")
    checkpoints = None if written is None else _path(written, root, f"{here}.checkpoints")
    if checkpoints is not None and checkpoints.exists() and not checkpoints.is_dir():
        raise ConfigError(f"{here}.checkpoints: {entry['checkpoints']} is not a folder")
    encrypt = entry.get("encrypt")
    if encrypt is not None and not isinstance(encrypt, bool):
        raise ConfigError(f"{here}.encrypt: expected true or false, not {_kind(encrypt)}")
    return ModelRecord(
        name=name,
        handler=_file(entry["handler"], root, f"{here}.handler"),
        model_file=_optional_file(entry.get("model_file"), root, f"{here}.model_file"),
        checkpoints=checkpoints,
        extra_files=tuple(_file(item, root, f"{here}.extra_files[{i}]") for i, item in enumerate(extra)),
        requirements=_optional_file(entry.get("requirements"), root, f"{here}.requirements"),
        encrypt=bool(encrypt),
    )


def _kind(value: Any) -> str:
    kinds = {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a mapping",
    }
    return kinds.get(type(value), type(value).__name__)


def _path(value: Any, root: Path, here: str) -> Path:
    """A path written relative to the project root that stays inside it (read as written, links not followed)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{here}: expected a path relative to the project root, not {_kind(value)}")
    if "\\" in value or "\0" in value:
        raise ConfigError(f"{here}: {value!r}: write the path with '/' (relative to the project root)")
    if posixpath.isabs(value) or value.startswith("~"):
        raise ConfigError(f"{here}: {value} is not relative: write it relative to the project root ({root})")
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../"):
        raise ConfigError(f"{here}: {value} is outside the project root ({root}): keep the project's files in it")
    return root / normal


def _file(value: Any, root: Path, here: str) -> Path:
    path = _path(value, root, here)
    if not path.exists():
        raise ConfigError(f"{here}: {value} does not exist (in {root})")
    if not path.is_file():
        raise ConfigError(f"{here}: {value} is not a file")
    return path


def _optional_file(value: Any, root: Path, here: str) -> Path | None:
    return None if value is None else _file(value, root, here)
