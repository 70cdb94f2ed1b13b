"""`torchship serve start|stop|status` and `torchship logs`: the project's local TorchServe, and its TLS gateway."""

from __future__ import annotations

import sys

import click

from torchship import errors as E

from .base import Ctx, emit, json_option, model_version_option, name_argument, pass_ctx
from .models import model_rows, models_table
from .table import render


@click.group()
def serve() -> None:
    """Run the project's local TorchServe (.torchship/server/), and its TLS gateway (.torchship/gateway/)."""


@serve.command("start")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for /ping Healthy.")
@click.option(
    "--tls",
    is_flag=True,
    help="Also start the TLS gateway (nginx) in front of the inference API, on https://127.0.0.1:8443: callers "
    "need a tenant key (torchship keys create); management and metrics stay on loopback.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Where the gateway listens (needs --tls; default 127.0.0.1:8443). Beyond loopback only when named here.",
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Your PEM certificate for the gateway (with --key); default: one from the project's local CA "
    "(.torchship/tls/ca.pem, made on first use).",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="The private key of --cert (PEM, mode 0600).",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    default=None,
    help="Where the gateway serves its per-tenant counters for Prometheus (needs --tls; loopback only; "
    "default 127.0.0.1:8444).",
)
@pass_ctx
def serve_start(
    c: Ctx,
    timeout: float,
    tls: bool,
    listen: str | None,
    cert: str | None,
    key_path: str | None,
    metrics_listen: str | None,
) -> None:
    """Start the server and wait until it is healthy; with --tls, the TLS gateway in front of it too."""
    if not tls and (listen or cert or key_path or metrics_listen):
        raise click.UsageError(
            "--listen, --cert, --key and --metrics-listen are the gateway's: add --tls (it never listens without TLS)"
        )
    if (cert is None) != (key_path is None):
        raise click.UsageError("give both --cert and --key, or neither")
    server = c.project.server
    if not server.start(timeout=timeout):
        st = server.status()
        click.echo(f"TorchServe is already running (pid {st.pid}) at {st.inference_url}: {st.detail}")
    else:
        st = server.status()
        click.echo(
            f"TorchServe started (pid {st.pid}): inference {st.inference_url}, management "
            f"{st.management_url}, metrics {st.metrics_url}; logs in {server.log_dir}"
        )
    if not tls:
        return
    from torchship.gateway import Listen

    gateway = c.project.gateway
    started = gateway.start(listen=listen, cert=cert, key=key_path, metrics_listen=metrics_listen)
    gw = gateway.status()
    if not started:
        click.echo(f"The TLS gateway is already running (pid {gw.pid}) at {gw.url}")
        if listen and str(Listen.parse(listen)) not in gw.listen:
            click.echo(
                f"note: it listens on {', '.join(gw.listen)}, not {listen}: serve stop, then start again", err=True
            )
        return
    ca = f"pin the CA {gw.ca_file}" if gw.ca_file else "your own certificate"
    click.echo(
        f"TLS gateway started (nginx pid {gw.pid}): {gw.url} -> inference only; {ca}; callers need a tenant "
        f"key (torchship keys create NAME); per-tenant metrics at {gw.metrics_url}; logs in {gateway.log_dir}"
    )
    if not all(Listen.parse(where).loopback for where in gw.listen):
        click.echo(f"note: the gateway listens beyond this machine ({', '.join(gw.listen)}), TLS only", err=True)


@serve.command("stop")
@pass_ctx
def serve_stop(c: Ctx) -> None:
    """Stop the TLS gateway (if it runs), then the server and its workers."""
    if c.project.gateway.stop():
        click.echo("TLS gateway stopped.")
    click.echo("TorchServe stopped." if c.project.server.stop() else "TorchServe is not running.")


@serve.command("status")
@json_option()
@pass_ctx
def serve_status(c: Ctx, as_json: bool) -> None:
    """The server's health and models, and its gateway; exits 0 only when the server (and a started gateway) is well."""
    st = c.project.server.status()
    gateway = c.project.gateway
    gw = gateway.status()
    gateway_failed = not gw.running and gateway.state() is not None  # started, and gone without a stop
    models = model_rows(c.project.client) if st.healthy else []
    if as_json:
        emit({**st.to_dict(), "gateway": gw.to_dict(), "models": [m.to_dict() for m in models]})
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
        if gw.running or gateway_failed:
            detail = (
                "not running: it stopped without `serve stop` (see its logs/error.log)" if gateway_failed else gw.detail
            )
            click.echo()
            click.echo(
                render(
                    ["gateway", "pid", "url", "ca", "keeper", "tenants", "metrics"],
                    [
                        [
                            detail,
                            gw.pid or "-",
                            gw.url or "-",
                            gw.ca_file or "(own certificate)",
                            gw.keeper_pid or "-",
                            gw.tenants,
                            gw.metrics_url or "-",
                        ]
                    ],
                )
            )
        if models:
            click.echo()
            click.echo(models_table(models))
    if not st.healthy or gateway_failed:
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
