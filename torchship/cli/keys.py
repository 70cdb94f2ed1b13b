"""`torchship keys list | rotate-model-key`: the model keys that encrypt weights at rest, and their rotation.

Key ids only: no command prints a key's bytes.
"""

from __future__ import annotations

import click

from torchship import errors as E

from .base import Ctx, emit, json_option, pass_ctx
from .build import model_key_option
from .table import render


@click.group()
def keys() -> None:
    """The model keys that encrypt archives' weights at rest (package --encrypt): list and rotate them."""


@keys.command("list")
@model_key_option
@json_option()
@pass_ctx
def list_keys(c: Ctx, model_key: str | None, as_json: bool) -> None:
    """Each model key's id, whether it is the current one, and the archives of the store it wraps."""
    rows = c.project.model_keys(model_key=model_key)
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no model keys yet: `torchship package NAME --encrypt` makes the project's keyring")
        return
    click.echo(
        render(
            ["key", "current", "archives"],
            [
                [
                    r["key_id"],
                    "*" if r["current"] else ("" if r["in_keyring"] else "NOT IN KEYRING"),
                    ", ".join(r["archives"]) or "-",
                ]
                for r in rows
            ],
        )
    )


@keys.command("rotate-model-key")
@model_key_option
@click.option(
    "--retire",
    "retire",
    multiple=True,
    metavar="KEY_ID",
    help="After rotating, remove this key from the keyring, when no archive of the store still uses it, every "
    "archive was rewrapped, and the running local server has loaded nothing wrapped under it (redeploy first) "
    "(repeatable). Copies of archives elsewhere that use it will no longer open.",
)
@json_option()
@pass_ctx
def rotate_model_key(c: Ctx, model_key: str | None, retire: tuple[str, ...], as_json: bool) -> None:
    """Make a new current model key and rewrap every encrypted archive of the store under it.

    The weights are not re-encrypted: each archive gets a new keys member and provenance, is re-signed and
    replaced atomically. Old keys stay in the keyring (archives copied elsewhere keep opening) until retired.
    """
    old, new, done, failed = c.project.rotate_model_key(model_key=model_key)
    from torchship.archiver.model_keys import shown_key_id

    retired, refused = [], []
    for kid in retire:
        if failed:  # an archive that was not rewrapped may still be under it, and may be unreadable
            refused.append(
                f"{shown_key_id(kid)} not retired: {len(failed)} archive(s) of the store were not rewrapped "
                "(see above); fix them and rotate again before retiring"
            )
            continue
        try:
            c.project.retire_model_key(kid, model_key=model_key)
            retired.append(kid)
        except E.ArchiveError as exc:
            refused.append(str(exc))
    if as_json:
        emit(
            {
                "old_key": old,
                "new_key": new,
                "archives": [
                    {"archive": r.path.name, "old_keys": list(r.old_keys), "new_key": r.new_key, "digest": r.digest}
                    for r in done
                ],
                "failed": [{"archive": a.name, "reason": why} for a, why in failed],
                "retired": retired,
                "not_retired": refused,
            }
        )
    else:
        click.echo(f"new current model key {new} (was {old}; kept in the keyring)")
        if done:
            click.echo(
                render(
                    ["archive", "old key", "new key"],
                    [[r.path.name, ", ".join(r.old_keys), r.new_key] for r in done],
                )
            )
        else:
            click.echo("no encrypted archives in the store to rewrap")
        for kid in retired:
            click.echo(f"retired {kid}: removed from the keyring")
    problems = [f"{archive.name} not rewrapped (it stays under its old key): {why}" for archive, why in failed]
    if problems or refused:
        raise E.ArchiveError("; ".join(problems + refused))
