"""`torchship deploy | models | describe | scale | set-default | unregister`: what the server runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .base import (
    Ctx,
    check_range,
    emit,
    json_option,
    model_version_option,
    name_argument,
    pass_ctx,
    public_key_option,
    say,
    version_argument,
)
from .table import render

if TYPE_CHECKING:
    from torchship.sdk.client import TorchServe
    from torchship.sdk.types import ModelDescription


def model_rows(client: TorchServe, name: str | None = None) -> list[ModelDescription]:
    """Every version of `name` (or of every model) as the server describes it."""
    names = [name] if name else [m.name for m in client.list_models()]
    rows: list[ModelDescription] = []
    for n in names:
        rows += client.versions(n)
    return rows


def models_table(models: list[ModelDescription]) -> str:
    """Render model versions as a table: status, workers and batching."""
    return render(
        ["model", "version", "default", "status", "workers", "min-max", "batch", "delay ms"],
        [
            [
                m.name,
                m.version,
                "*" if m.is_default else "",
                m.status,
                m.ready_workers,
                f"{m.min_workers}-{m.max_workers}",
                m.batch_size,
                m.max_batch_delay,
            ]
            for m in models
        ],
    )


@click.command()
@name_argument()
@model_version_option("Version to deploy (default: the newest archive).")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Workers to start.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1))
@click.option("--max-batch-delay", default=None, type=click.IntRange(min=0), help="Milliseconds.")
@click.option("--default", "make_default", is_flag=True, help="Make this version the default.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait until ready.")
@public_key_option
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="DANGER: deploy a third-party archive without signature/provenance (safety checks still run).",
)
@json_option()
@pass_ctx
def deploy(
    c: Ctx,
    name: str,
    version: str | None,
    workers: int | None,
    batch_size: int | None,
    max_batch_delay: int | None,
    make_default: bool,
    timeout: float,
    public_key: str | None,
    allow_unsigned: bool,
    as_json: bool,
) -> None:
    """Verify an archive of the model store, register it, and wait until it serves."""
    if allow_unsigned:
        click.echo("WARNING: --allow-unsigned: the archive's signature and provenance are not checked", err=True)
    result = c.project.deploy(
        name,
        version,
        workers=workers,
        batch_size=batch_size,
        max_batch_delay=max_batch_delay,
        make_default=make_default,
        timeout=timeout,
        public_key=public_key,
        allow_unsigned=allow_unsigned,
    )
    d = result.description
    if as_json:
        emit({"action": result.action, "seconds": round(result.seconds_to_ready, 2), **d.to_dict()})
    else:
        click.echo(
            f"{name} {d.version} {result.action}: {d.ready_workers} worker(s) ready, batch {d.batch_size} "
            f"/ {d.max_batch_delay} ms, default: {'yes' if d.is_default else 'no'} "
            f"({result.seconds_to_ready:.1f} s)"
        )


@click.command()
@name_argument(required=False)
@json_option()
@pass_ctx
def models(c: Ctx, name: str | None, as_json: bool) -> None:
    """Table of registered models and versions."""
    rows = model_rows(c.project.client, name)
    if as_json:
        emit([m.to_dict() for m in rows])
    elif rows:
        click.echo(models_table(rows))
    else:
        click.echo("no models registered")


@click.command()
@name_argument()
@model_version_option("A version, or 'all' (default: the default version).")
@json_option("Full description as JSON (workers included).")
@pass_ctx
def describe(c: Ctx, name: str, version: str | None, as_json: bool) -> None:
    """A model version: settings, default flag, and each worker."""
    descs = c.project.client.describe(name, version)
    if as_json:
        emit([d.to_dict() for d in descs])
        return
    click.echo(models_table(descs))
    workers = [
        [d.version, w.id, w.status, w.pid, f"{(w.memory_usage or 0) / 1e6:.0f}"] for d in descs for w in d.workers
    ]
    if workers:
        click.echo()
        click.echo(render(["version", "worker", "status", "pid", "memory MB"], workers))


@click.command()
@name_argument()
@click.option("--min", "min_workers", required=True, type=click.IntRange(min=0), help="Minimum workers.")
@click.option(
    "--max", "max_workers", default=None, type=click.IntRange(min=0), help="Maximum workers (default: --min)."
)
@model_version_option()
@json_option()
@pass_ctx
def scale(c: Ctx, name: str, min_workers: int, max_workers: int | None, version: str | None, as_json: bool) -> None:
    """Set a model version's workers; waits until they run."""
    check_range(min_workers, max_workers)
    say(as_json, c.project.scale(name, min_workers=min_workers, max_workers=max_workers, version=version))


@click.command("set-default")
@name_argument()
@version_argument()
@json_option()
@pass_ctx
def set_default(c: Ctx, name: str, version: str, as_json: bool) -> None:
    """Make VERSION the version that /predictions/NAME serves."""
    say(as_json, c.project.set_default(name, version))


@click.command()
@name_argument()
@model_version_option("Version to remove (default: the default version).")
@json_option()
@pass_ctx
def unregister(c: Ctx, name: str, version: str | None, as_json: bool) -> None:
    """Remove a model version from the server (the archive stays in the store)."""
    say(as_json, c.project.unregister(name, version))
