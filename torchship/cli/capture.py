"""`torchship capture`: record a sample of a model's live requests and answers, per version."""

from __future__ import annotations

import click

from torchship.ops.capture import parse_redact

from .base import Ctx, emit, json_option, model_version_option, name_argument, pass_ctx
from .table import render

MIB = 1024 * 1024


@click.command()
@name_argument(required=False)
@model_version_option("The version to capture (default: the one the server serves by default).")
@click.option("--sample", type=click.FloatRange(min=0, max=1), default=None, help="Fraction of requests to record.")
@click.option("--off", is_flag=True, help="Stop capturing (what was captured stays).")
@click.option(
    "--redact",
    multiple=True,
    metavar="FIELD[=hash|drop]",
    help=(
        "A top-level field of the request to hash (HMAC, the same user maps to the same value) or drop; repeat. "
        "`body` also covers a body that is not JSON (an image)."
    ),
)
@click.option("--max-mb", type=click.IntRange(min=1), default=None, help="Most the version's captures hold [64].")
@click.option("--file-mb", type=click.IntRange(min=1), default=None, help="Each capture file's size [8].")
@click.option(
    "--drift-every",
    type=click.FloatRange(min=0, max=86400),
    default=None,
    metavar="SECONDS",
    help="How often the workers measure drift for the metrics port (TorchshipDrift); 0: never [30].",
)
@json_option()
@pass_ctx
def capture(
    c: Ctx,
    name: str | None,
    version: str | None,
    sample: float | None,
    off: bool,
    redact: tuple[str, ...],
    max_mb: int | None,
    file_mb: int | None,
    drift_every: float | None,
    as_json: bool,
) -> None:
    """Record a sample of NAME's requests and answers (--sample F), stop (--off), or show what is captured.

    Records go to .torchship/capture/NAME/VERSION/*.jsonl (input, answer, status, time in the worker,
    request id; never a header), bounded and rotated; the workers pick a change up within a second.
    """
    if name is None:
        if sample is not None or off or redact or version:
            raise click.UsageError("name the model to capture (torchship capture NAME --sample F)")
        rows = c.project.capture_status()
        if as_json:
            emit([s.to_dict() for s in rows])
            return
        click.echo(
            render(
                ["model", "version", "sample", "redact", "files", "MiB", "max MiB"],
                [
                    [
                        s.model,
                        s.version,
                        f"{s.sample:g}" if s.sample else "off",
                        " ".join(f"{k}={v}" for k, v in s.redact.items()),
                        s.files,
                        f"{s.bytes / MIB:.2f}",
                        s.max_bytes // MIB,
                    ]
                    for s in rows
                ],
            )
            if rows
            else "nothing captured yet: torchship capture NAME --sample 0.1"
        )
        return
    if off:
        if sample is not None or redact or max_mb or file_mb or drift_every is not None:
            raise click.UsageError("--off takes no other setting")
        v, was_on = c.project.capture_off(name, version=version)
        status = f"capture of {name} {v} is off" if was_on else f"capture of {name} {v} was not on"
        if as_json:
            emit({"model": name, "version": v, "capturing": False, "was_on": was_on})
        else:
            click.echo(status)
        return
    if sample is None and (redact or max_mb or file_mb or drift_every is not None):
        raise click.UsageError("--redact, --max-mb, --file-mb and --drift-every go with --sample F")
    if sample is None:
        rows = c.project.capture_status(name)
        if as_json:
            emit([s.to_dict() for s in rows])
        else:
            for s in rows:
                click.echo(
                    f"{s.model} {s.version}: sample {s.sample:g}, {s.files} file(s), {s.bytes / MIB:.2f} MiB"
                    if s.sample
                    else f"{s.model} {s.version}: off, {s.files} file(s), {s.bytes / MIB:.2f} MiB"
                )
            if not rows:
                click.echo(f"nothing captured of {name}: torchship capture {name} --sample 0.1")
        return
    v, settings = c.project.capture(
        name,
        version=version,
        sample=sample,
        redact=parse_redact(redact),
        max_bytes=max_mb * MIB if max_mb else None,
        file_bytes=file_mb * MIB if file_mb else None,
        drift_every_s=drift_every,
    )
    if as_json:
        emit({"model": name, "version": v, "capturing": bool(settings["sample"]), **settings})
        return
    redacted = ", ".join(f"{k} ({how})" for k, how in settings["redact"].items())
    click.echo(
        f"capturing {settings['sample']:g} of {name} {v}'s requests into "
        f"{c.project.paths.capture_dir / name / v} (at most {settings['max_bytes'] // MIB} MiB"
        + (f"; redacted: {redacted}" if redacted else "")
        + ")"
    )
