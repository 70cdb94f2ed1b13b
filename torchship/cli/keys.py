"""`torchship keys`: model keys (weights at rest) and the TLS gateway's tenant API keys.

The model keys encrypt archives' weights (list, rotate-model-key); the tenant keys let callers through
the gateway (create, revoke, list --tenants).
Key ids only: no command prints a key's bytes, except `keys create`, which prints the new tenant key once.

`keys list` keeps listing the model keys (its --json is a list of them that scripts read); the tenant
keys are another kind (they authenticate callers, they encrypt nothing), so they have their own table:
`keys list --tenants`, with each tenant's requests and errors at the gateway.
"""

from __future__ import annotations

import click

from torchship import errors as E

from .base import Ctx, emit, json_option, pass_ctx
from .build import model_key_option
from .table import render


@click.group()
def keys() -> None:
    """Model keys (weights at rest, package --encrypt) and the TLS gateway's tenant API keys."""


@keys.command("list")
@model_key_option
@click.option(
    "--tenants",
    is_flag=True,
    help="The gateway's tenant API keys instead: models, rate, and requests and errors per tenant.",
)
@json_option()
@pass_ctx
def list_keys(c: Ctx, model_key: str | None, tenants: bool, as_json: bool) -> None:
    """Each model key's id, whether it is the current one, and the archives of the store it wraps.

    With --tenants: each tenant's key id, models, rate, and its requests at the gateway (2xx, 4xx of
    which 429, 5xx), from the gateway's access log.
    """
    if tenants:
        _list_tenants(c, as_json)
        return
    rows = c.project.model_keys(model_key=model_key)
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no model keys yet: `torchship package NAME --encrypt` makes the project's keyring")
        _tenant_hint(c)
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
    _tenant_hint(c)


def _tenant_hint(c: Ctx) -> None:
    count = len(c.project.gateway.tenants.all())
    if count:
        click.echo(f"({count} tenant key(s) of the TLS gateway: torchship keys list --tenants)")


def _list_tenants(c: Ctx, as_json: bool) -> None:
    rows = c.project.tenant_keys()
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no tenant keys yet: `torchship keys create NAME` makes one (the gateway: serve start --tls)")
        return
    table = []
    for r in rows:
        u = r["usage"] or {}
        counts = [u.get("requests", 0), u.get("ok", 0), u.get("client_errors", 0), u.get("rate_limited", 0)]
        counts += [u.get("server_errors", 0), u.get("last") or "-"]
        if r["tenant"]:
            models = ", ".join(r["models"]) if r["models"] is not None else "all"
            rate = f"{r['rate']['rate']} (burst {r['rate']['burst']})" if r["rate"] else "unlimited"
            table.append([r["name"], r["key_id"], models, rate, *counts])
        else:
            table.append([r["name"], "-", "-", "-", *counts])
    click.echo(render(["tenant", "key id", "models", "rate", "requests", "2xx", "4xx", "429", "5xx", "last"], table))


@keys.command("create")
@click.argument("name")
@click.option(
    "--models",
    default=None,
    metavar="M1,M2",
    help="The only models this key may call (403 for others); default: every model.",
)
@click.option(
    "--rate",
    default=None,
    metavar="R",
    help="Requests per second (10, 10/s) or per minute (600/m); over it the gateway answers 429 with Retry-After. "
    "Default: unlimited.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=0),
    default=None,
    help="Requests over the rate let through at once before 429s (default: one second's worth).",
)
@json_option()
@pass_ctx
def create_key(c: Ctx, name: str, models: str | None, rate: str | None, burst: int | None, as_json: bool) -> None:
    """Make tenant NAME's API key for the TLS gateway and print it, once: it is not shown again.

    Callers send it as `Authorization: Bearer <key>`. A running gateway loads it before this returns.
    """
    wanted = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    tenant, secret = c.project.create_key(name, models=wanted, rate=rate, burst=burst)
    running = c.project.gateway.is_running()
    if as_json:
        emit({**tenant.to_dict(), "key": secret, "gateway_running": running})
        return
    allowed = ", ".join(tenant.models) if tenant.models is not None else "every model"
    limit = f"{tenant.rate} (burst {tenant.rate.burst})" if tenant.rate else "no rate limit"
    click.echo(f"tenant {tenant.name} (key id {tenant.key_id}): {allowed}; {limit}")
    click.echo(f"key (shown once, store it now): {secret}")
    if not running:
        click.echo("the TLS gateway is not running: the key works once it is (torchship serve start --tls)", err=True)


@keys.command("revoke")
@click.argument("name")
@json_option()
@pass_ctx
def revoke_key(c: Ctx, name: str, as_json: bool) -> None:
    """Remove tenant NAME's API key: a running gateway refuses it from when this returns, without a restart."""
    removed = c.project.revoke_key(name)
    if as_json:
        emit({"name": name, "revoked": removed})
    elif removed:
        click.echo(f"revoked the key of tenant {name}")
    if not removed:
        raise E.BadInput(f"no tenant {name}: torchship keys list --tenants shows them")


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
