"""`torchship serve start|stop|status`: the project's local TorchServe."""

from __future__ import annotations

import sys

import click

from .base import Ctx, emit, json_option, pass_ctx
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
