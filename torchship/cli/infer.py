"""`torchship predict | explain | ping | metrics`: asking the models, and how they answer."""

from __future__ import annotations

import click

from .base import (
    Ctx,
    body_options,
    emit,
    json_option,
    model_version_option,
    name_argument,
    pass_ctx,
    request_body,
    stdout_write,
)
from .table import render


@click.command()
@name_argument()
@model_version_option()
@body_options
@click.option("--stream", is_flag=True, help="Print the answer's chunks as they arrive (streaming handlers).")
@pass_ctx
def predict(c: Ctx, name: str, version: str | None, json_data: str | None, file_path: str | None, stream: bool) -> None:
    """One prediction; prints the answer."""
    data = request_body(json_data, file_path)
    if stream:
        for chunk in c.project.client.stream(name, data, version=version):
            stdout_write(chunk)
        stdout_write("\n")
        return
    answer = c.project.client.predict(name, data, version=version)
    if isinstance(answer, bytes):
        stdout_write(answer)
    else:
        emit(answer)


@click.command()
@name_argument()
@model_version_option()
@body_options
@pass_ctx
def explain(c: Ctx, name: str, version: str | None, json_data: str | None, file_path: str | None) -> None:
    """An explanation of one prediction (if the model's handler offers one)."""
    emit(c.project.client.explain(name, request_body(json_data, file_path), version=version))


@click.command()
@json_option()
@pass_ctx
def ping(c: Ctx, as_json: bool) -> None:
    """The server's health."""
    health = c.project.client.ping()
    if as_json:
        emit({"status": health})
    else:
        click.echo(health)


@click.command()
@name_argument(required=False)
@click.option("--raw", is_flag=True, help="Print the Prometheus text as served.")
@json_option()
@pass_ctx
def metrics(c: Ctx, name: str | None, raw: bool, as_json: bool) -> None:
    """Requests and latency per model, from the metrics port."""
    if raw:
        click.echo(c.project.client.metrics_text(), nl=False)
        return
    m = c.project.client.metrics()
    names = [name] if name else m.models()
    rows = [
        {
            "model": n,
            "requests": int(m.requests(n)),
            "mean_latency_ms": _round(m.mean_latency_ms(n)),
            "mean_queue_ms": _round(m.mean_queue_ms(n)),
        }
        for n in names
    ]
    if as_json:
        emit(rows)
    elif rows:
        click.echo(
            render(
                ["model", "requests", "mean latency ms", "mean queue ms"],
                [[r["model"], r["requests"], r["mean_latency_ms"], r["mean_queue_ms"]] for r in rows],
            )
        )
    else:
        click.echo("no inference metrics yet")


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)  # NaN -> None
