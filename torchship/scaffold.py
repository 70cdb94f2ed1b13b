"""The files of a new torchship project (`torchship init`): what they hold, and writing them all or none.

A project is a folder with the local server's config.properties and log4j2.xml (the same secure,
quiet defaults as torchship's own, shipped in the wheel under torchship/templates/), deploy.yaml,
torchship.yaml (what `torchship package NAME` packs), a model, the script that trains it and saves a
checkpoint (torchship.checkpoint), a handler on torchship's handler base, and a .gitignore.
`project_files` is pure (name in, file texts out); `write_project` writes them, refusing to
overwrite anything unless forced.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from torchship.archiver.handler_base import BASE_MODULES
from torchship.archiver.names import InvalidName, check_name
from torchship.sdk.errors import TorchServeError

__all__ = [
    "DEFAULT_NAME",
    "TEMPLATES",
    "ScaffoldFile",
    "Scaffold",
    "ProjectExists",
    "default_name",
    "handler_module",
    "project_files",
    "template_text",
    "write_project",
]

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_NAME = "my-model"
# Modules beside a project's handler in the worker: the handler base's, and the project's model file.
_TAKEN = (*BASE_MODULES, "model")
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


class ProjectExists(TorchServeError):
    """`torchship init` would overwrite files that exist (nothing was written); `paths` names them all."""

    def __init__(self, root: Path, paths: list[Path]) -> None:
        self.root = root
        self.paths = paths
        names = ", ".join(str(p.relative_to(root)) for p in paths)
        super().__init__(
            f"{root} already has {names}: nothing was written (--force overwrites them, or choose another folder)"
        )


@dataclass(frozen=True)
class ScaffoldFile:
    """One file of a new project: its path relative to the project, its text, and what it is for."""

    path: str
    text: str
    about: str


@dataclass(frozen=True)
class Scaffold:
    """The files of a new project for model `name`, whose handler is the file `handler`."""

    name: str
    handler: str
    files: tuple[ScaffoldFile, ...]


def template_text(name: str) -> str:
    """The text of the packaged template `name` (torchship/templates/)."""
    return (TEMPLATES / name).read_text(encoding="utf-8")


def default_name(folder: str | os.PathLike[str]) -> str:
    """The model name a project in `folder` gets by default: the folder's name made valid, else my-model."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(folder).resolve().name)
    text = re.sub(r"\.{2,}", ".", text).lstrip("-_.").rstrip("-_.")[:64].rstrip("-_.")
    try:
        return check_name(text)
    except InvalidName:
        return DEFAULT_NAME


def handler_module(name: str) -> str:
    """The handler's module name for model `name`: `<name>_handler`, a valid identifier.

    The worker imports a handler by its file name as a top-level module, beside the model file and the
    handler base's modules, so the name is the model's (as an identifier) and never one of theirs.
    """
    ident = re.sub(r"\W+", "_", name.lower()).strip("_") or "model"
    if ident[0].isdigit():
        ident = "model_" + ident
    module = f"{ident}_handler"
    return "my_" + module if module in _TAKEN else module


def _class_name(module: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in module.split("_") if part)


def _yaml_key(name: str) -> str:
    """`name` as a YAML mapping key that reads back as that string (quoted when YAML would read e.g. a
    number or a boolean: 1.0, 123, yes, null)."""
    return name if yaml.safe_load(f"{name}: 0") == {name: 0} else f'"{name}"'


def _render(template: str, values: dict[str, str]) -> str:
    text = template_text(template)
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise ValueError(f"template {template} has no value for {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def project_files(name: str) -> Scaffold:
    """The files of a new project for model `name` (checked by the one name rule), in writing order."""
    check_name(name)
    handler = handler_module(name) + ".py"
    values = {"name": name, "name_key": _yaml_key(name), "handler": handler, "handler_class": _class_name(handler[:-3])}
    files = (
        ScaffoldFile(
            "config.properties", template_text("config.properties"), "TorchServe's config: loopback only, token auth on"
        ),
        ScaffoldFile(
            "log4j2.xml", template_text("log4j2.xml"), "server logging: quiet, keeps warnings and worker tracebacks"
        ),
        ScaffoldFile(
            "torchship.yaml",
            _render("torchship.yaml.tmpl", values),
            f"the project: {name}'s handler, model file, checkpoints",
        ),
        ScaffoldFile(
            "deploy.yaml",
            _render("deploy.yaml.tmpl", values),
            f"the desired state: {name} 1.0, one worker, batch 8 / 1 ms",
        ),
        ScaffoldFile("model.py", _render("model.py.tmpl", values), "the model: edit it (build_model)"),
        ScaffoldFile(
            "train.py", _render("train.py.tmpl", values), "trains it, saves checkpoints/ with torchship.checkpoint"
        ),
        ScaffoldFile(
            handler, _render("handler.py.tmpl", values), "the TorchServe handler: parse and predict, on BatchHandler"
        ),
        ScaffoldFile(".gitignore", template_text("gitignore.tmpl"), "keeps generated folders out of git"),
    )
    return Scaffold(name, handler, files)


def write_project(root: str | os.PathLike[str], scaffold: Scaffold, *, force: bool = False) -> list[Path]:
    """Write the scaffold's files into `root` (made if missing); return their paths.

    All or nothing: when any of the files exists and `force` is false, ProjectExists names every one and
    nothing is written; each file is written beside its place first and moved there only once all are
    written, so a failure midway (a full disk) leaves the folder as it was.
    """
    folder = Path(root).resolve()
    targets = [folder / f.path for f in scaffold.files]
    existing = [p for p in targets if os.path.lexists(p)]
    if existing and not force:
        raise ProjectExists(folder, existing)
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    try:
        for file, target in zip(scaffold.files, targets):
            tmp = target.with_name(f".{target.name}.torchship-init")
            staged.append(tmp)
            tmp.write_text(file.text, encoding="utf-8")
        for tmp, target in zip(staged, targets):
            os.replace(tmp, target)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    return targets
