"""`torchship doctor`: what this machine needs and has, one row per check, and the fix of each failing row."""

from __future__ import annotations

import sys

import click

from .base import Ctx, emit, json_option, pass_ctx
from .table import render


@click.command()
@json_option("Machine-readable output: {ok, seconds, checks: [{check, status, found, fix}]}.")
@pass_ctx
def doctor(c: Ctx, as_json: bool) -> None:
    """Check Python, Java, pinned packages, ports, the server, key modes, disk and data; exit 1 on any FAIL.

    Rows are ok, warn (worth knowing; never fails), FAIL (run its fix) or skip (does not apply now).
    See docs/doctor.md for what each row checks.
    """
    report = c.project.doctor()
    if as_json:
        emit(report.to_dict())
    else:
        rows = [[r.check, r.status, r.found, r.fix] for r in report.checks]
        click.echo(render(["check", "status", "found", "fix"], rows))
        click.echo()
        click.echo(report.summary())
    if not report.ok:
        sys.exit(1)
