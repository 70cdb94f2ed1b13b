"""The `torchship` command line: one module per command group, each command a few lines over `Project`.

Library errors become one line on stderr and an exit code per kind, here and only here (see `base`).
"""

from __future__ import annotations

import sys

import click

from . import build, fleet, infer, keys, models, perf
from .base import Ctx, exit_code_for, report
from .capture import capture
from .doctor import doctor
from .drift import drift
from .init import init
from .serve import logs, serve

__all__ = ["cli", "main", "exit_code_for"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="TorchServe config file (default: config.properties of the project).",
)
@click.version_option(package_name="torchship")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """torchship: train, package, deploy, version and scale PyTorch models on TorchServe."""
    ctx.obj = Ctx(config)


for command in (
    init,
    serve,
    build.train,
    build.package,
    build.verify,
    keys.keys,
    models.deploy,
    models.models,
    models.describe,
    models.scale,
    models.set_default,
    models.unregister,
    infer.predict,
    infer.explain,
    infer.ping,
    logs,
    infer.metrics,
    fleet.plan,
    fleet.apply_cmd,
    fleet.rollout,
    fleet.rollback,
    fleet.history,
    fleet.export_cmd,
    perf.bench_cmd,
    perf.tune,
    perf.autoscale,
    capture,
    drift,
    doctor,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see `torchship.cli.base` for what each means)."""
    try:
        cli.main(args=argv, prog_name="torchship", standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001  every failure is one line and an exit code (base.report)
        return report(exc)


if __name__ == "__main__":
    sys.exit(main())
