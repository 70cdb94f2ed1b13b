"""`torchship drift`: a version's captured traffic against the reference its training recorded."""

from __future__ import annotations

import time

import click

from torchship.sdk.errors import DriftDetected

from .base import Ctx, emit, json_option, model_version_option, name_argument, pass_ctx
from .table import render


@click.command()
@name_argument()
@model_version_option("The version to judge (default: the one the server serves by default).")
@click.option(
    "--window", type=click.IntRange(min=1), default=500, show_default=True, help="The last N captured requests."
)
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG: reference vs live.")
@click.option(
    "--capture-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the workers write captures (default: the project's .torchship/capture).",
)
@json_option('Machine-readable output: "drift": true/false and the figures of every signal.')
@pass_ctx
def drift(
    c: Ctx,
    name: str,
    version: str | None,
    window: int,
    plot: str | None,
    capture_dir: str | None,
    as_json: bool,
) -> None:
    """Compare NAME's last --window captured requests with its training reference; exit 13 on drift.

    Per signal (the handler's, and the predictions): PSI for categories (0.1 watch, 0.2 drift), KS for
    continuous values (drift over 0.1 and the critical value at 0.001); see docs/capture.md.
    """
    report = c.project.drift(name, version=version, window=window, plot=plot, capture_dir=capture_dir)
    if as_json:
        emit(report.to_dict())
    else:
        span = ""
        if report.first and report.last:
            first, last = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) for t in (report.first, report.last))
            span = f", {first} to {last}"
        click.echo(
            f"{name} {report.version}: the last {report.records} captured requests{span}, against the reference of "
            f"training run {report.run or '?'}"
        )
        click.echo(
            render(
                ["signal", "test", "statistic", "threshold", "verdict"],
                [
                    [
                        s.signal,
                        s.test,
                        "-" if s.statistic is None else f"{s.statistic:.3f}",
                        f"{s.threshold:.3f}",
                        s.verdict if s.verdict != "too few" else f"too few ({s.live})",
                    ]
                    for s in report.signals
                ],
            )
        )
        if report.plot:
            click.echo(f"plot: {report.plot}")
        click.echo(f"drift: {', '.join(report.drifted)}" if report.drift else "no drift")
    if report.drift:
        shown = report.drifted[:8]
        more = len(report.drifted) - len(shown)
        raise DriftDetected(
            f"{name} {report.version} drifted from its training reference in {len(report.drifted)} of "
            f"{len(report.signals)} signals: {', '.join(shown)}" + (f" and {more} more" if more else "")
        )
