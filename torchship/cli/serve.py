"""`torchship serve start|stop|status` and `torchship logs`: the project's local TorchServe."""

from __future__ import annotations

import sys

import click

from torchship import errors as E

from .base import Ctx, emit, json_option, model_version_option, name_argument, pass_ctx
from .models import model_rows, models_table
from .table import render


@click.group()
def serve() -> None:
    """Run the project's local TorchServe (.torchship/server/)."""


@serve.command("start")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for /ping Healthy.")
@pass_ctx
def serve_start(c: Ctx, timeout: float) -> None:
    """Start the server and wait until it is healthy."""
    server = c.project.server
    if not server.start(timeout=timeout):
        st = server.status()
        click.echo(f"TorchServe is already running (pid {st.pid}) at {st.inference_url}: {st.detail}")
        return
    st = server.status()
    click.echo(
        f"TorchServe started (pid {st.pid}): inference {st.inference_url}, management "
        f"{st.management_url}, metrics {st.metrics_url}; logs in {server.log_dir}"
    )


@serve.command("stop")
@pass_ctx
def serve_stop(c: Ctx) -> None:
    """Stop the server and its workers."""
    click.echo("TorchServe stopped." if c.project.server.stop() else "TorchServe is not running.")


@serve.command("status")
@json_option()
@pass_ctx
def serve_status(c: Ctx, as_json: bool) -> None:
    """Health and models of the server; exits 0 only when it is healthy."""
    st = c.project.server.status()
    models = model_rows(c.project.client) if st.healthy else []
    if as_json:
        emit({**st.to_dict(), "models": [m.to_dict() for m in models]})
    else:
        click.echo(
            render(
                ["server", "pid", "health", "inference", "management", "metrics"],
                [
                    [
                        "running" if st.running else "stopped",
                        st.pid or "-",
                        st.detail,
                        st.inference_url,
                        st.management_url,
                        st.metrics_url,
                    ]
                ],
            )
        )
        if models:
            click.echo()
            click.echo(models_table(models))
    if not st.healthy:
        sys.exit(3)


@click.command()
@name_argument(required=False)
@model_version_option("Only this version's lines.")
@click.option("--lines", "-n", "count", type=click.IntRange(min=1), default=50, show_default=True, help="How many.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they are written (Ctrl-C stops).")
@pass_ctx
def logs(c: Ctx, name: str | None, version: str | None, count: int, follow: bool) -> None:
    """The server's and its workers' log lines: all, or model NAME's (keys never shown)."""
    if version and not name:
        raise click.UsageError("--version needs a model NAME")
    server_logs = c.project.client.logs
    if server_logs is None:
        raise E.ConfigError("the server's logs are not on this machine (TS_MANAGEMENT_URL names another server)")
    if not server_logs.exists():
        raise E.ConfigError(f"no server logs in {server_logs.log_dir}: start the server first (torchship serve start)")
    versions = _known_versions(c, name) if name and not version else []
    lines = server_logs.lines(name, version, last=count, versions=versions)
    for line in lines:
        click.echo(line.text)
    if not lines and not follow:
        what = f"{name} {version}" if version else name or "the server"
        click.echo(f"no log lines of {what} in {server_logs.log_dir}", err=True)
    if follow:
        for line in server_logs.follow(name, version, versions=versions):
            click.echo(line.text)


def _known_versions(c: Ctx, name: str) -> list[str]:
    """The versions of `name` the server serves and the project has packaged (to read worker names)."""
    registry_exists = (c.project.paths.state_dir / "registry.db").is_file()  # reading must not create it
    found = [r.version for r in c.project.registry.archives(name)] if registry_exists else []
    try:
        found += [d.version for d in c.project.client.versions(name)]
    except E.TorchServeError:
        pass  # not running, or not registered: the lines are still in the files
    return found
