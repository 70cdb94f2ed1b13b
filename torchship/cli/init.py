"""`torchship init`: scaffold a project of your own (torchship.scaffold), and say what to run next."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import click

from .base import name_option

# A request the scaffold's handler answers (train.py's stand-in task has four features).
EXAMPLE_REQUEST = '{"features": [0.5, -1.2, 0.3, 2.0]}'


@click.command()
@click.argument("directory", metavar="[DIR]", required=False, type=click.Path(file_okay=False, path_type=Path))
@name_option("The model's name (default: the folder's name made valid, else my-model).")
@click.option("--force", is_flag=True, help="Overwrite files that exist (without it: refuse, and write nothing).")
def init(directory: Path | None, model_name: str | None, force: bool) -> None:
    """Scaffold a project in DIR (default: here; made if missing): server config, a model, its training and handler.

    Writes config.properties and log4j2.xml (secure, quiet defaults), torchship.yaml, deploy.yaml, model.py,
    train.py, <name>_handler.py and .gitignore. Refuses to overwrite any file (naming them all, writing
    nothing; exit 5) unless --force is given.
    """
    from torchship.scaffold import ProjectExists, default_name, project_files, write_project

    root = (directory or Path.cwd()).resolve()
    if root.exists() and not root.is_dir():
        raise click.BadParameter(f"{root} is not a folder", param_hint="DIR")
    name = model_name or default_name(root)
    scaffold = project_files(name)
    existed = {f.path for f in scaffold.files if os.path.lexists(root / f.path)}
    try:
        write_project(root, scaffold, force=force)
    except ProjectExists as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(5)  # a conflict (cli.base): the files exist already

    click.echo(f"created project {name} in {root}:")
    width = max(len(f.path) for f in scaffold.files)
    for f in scaffold.files:
        mark = " (overwritten)" if f.path in existed else ""
        click.echo(f"  {f.path:<{width}}  {f.about}{mark}")
    steps = [
        (f"{_python()} train.py", f"train: checkpoints/{name}/<run>/"),
        (f"torchship package {name} --version 1.0", f"build and sign model_store/{name}-1.0.mar"),
        ("torchship serve start", "the local TorchServe of this folder"),
        ("torchship apply deploy.yaml", "register it as deploy.yaml says"),
        (f"torchship predict {name} --json {shlex.quote(EXAMPLE_REQUEST)}", ""),
    ]
    if root != Path.cwd().resolve():
        steps.insert(0, (f"cd {shlex.quote(str(root))}", ""))
    click.echo("next:")
    width = max(len(cmd) for cmd, note in steps if note)
    for cmd, note in steps:
        click.echo(f"  {cmd:<{width}}  # {note}" if note else f"  {cmd}")


def _python() -> str:
    """How to call the Python that has torchship (train.py imports it): `python` when that is it."""
    found = shutil.which("python")
    if found and Path(found).absolute().parent == Path(sys.executable).absolute().parent:
        return "python"
    return shlex.quote(sys.executable)
