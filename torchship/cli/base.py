"""What every command shares: the project, the options that recur, output, and errors -> exit codes.

Exit codes: 0 ok, 1 other failure, 2 usage, 3 server unreachable or not started, 4 not found,
5 conflict (exists already, or forbidden), 6 unauthorized, 7 bad input, 8 archive or verification
failure, 9 timed out, 10 server error, 11 rollout rejected, 13 drift found (torchship drift),
70 a bug in torchship (internal error).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from torchship import errors as E
from torchship.project import Project

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (E.ServerUnreachable, 3),
    (E.ServerStartError, 3),
    (E.ModelNotFound, 4),
    (E.ModelAlreadyExists, 5),
    (E.Forbidden, 5),
    (E.Unauthorized, 6),
    (E.BadRequest, 7),
    (E.PayloadTooLarge, 7),
    (E.BadInput, 7),
    (E.ArchiveError, 8),
    (E.VerificationError, 8),
    (E.ReadinessTimeout, 9),
    (E.ServerError, 10),
    (E.RolloutFailed, 11),
    (E.DriftDetected, 13),
    (E.TorchServeError, 1),
    (OSError, 1),  # the machine said no (a file, a permission, a disk): not a bug
]
INTERNAL_ERROR = 70  # sysexits' EX_SOFTWARE: not the user's fault


def exit_code_for(exc: BaseException) -> int:
    """The exit code of a library error (see the module docstring); anything else is a bug."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return INTERNAL_ERROR


def report(exc: BaseException) -> int:
    """Print one line for `exc` on stderr and return its exit code.

    torchship's own errors say what happened and what to do; anything else is a bug in torchship: one line
    that says so, and the traceback only with TORCHSHIP_DEBUG=1.
    """
    code = exit_code_for(exc)
    if code == INTERNAL_ERROR:
        click.echo(
            f"internal error: {type(exc).__name__}: {_one_line(exc)} (a bug in torchship; run again with "
            "TORCHSHIP_DEBUG=1 for the traceback, and please report it)",
            err=True,
        )
        if os.environ.get("TORCHSHIP_DEBUG"):
            traceback.print_exception(exc)
    else:
        click.echo(f"error: {_one_line(exc)}", err=True)
    return code


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    first, _, rest = text.partition("\n")
    return first if not rest.strip() else first + "\n" + rest  # start-up failures keep the log tail


class Ctx:
    """The click context object: the project (built from `--config`, or found from here)."""

    def __init__(self, config: str | None) -> None:
        self.project = Project.find(config=config) if config else Project.find()


pass_ctx = click.make_pass_decorator(Ctx)


def emit(data: Any) -> None:
    """Machine-readable output (--json)."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def say(as_json: bool, status: str, **fields: Any) -> None:
    """A status line, or {"status": ..., **fields} with --json."""
    if as_json:
        emit({"status": status, **fields})
    else:
        click.echo(status)


# ---------------------------------------------------------------- options that recur


def _checked_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A model NAME (or --name) must pass the one rule (archiver.names). Checked while the command
    line is parsed, so a bad name fails before any file is read or any request is sent (exit 7)."""
    from torchship.archiver.names import check_name

    return None if value is None else check_name(value)


def _checked_version(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A model VERSION (or --version) must pass the one rule (archiver.names)."""
    from torchship.archiver.names import check_version

    return None if value is None else check_version(value)


def name_argument(required: bool = True) -> Callable[[F], F]:
    """Add the NAME argument, checked by the one name rule (archiver.names)."""
    return click.argument("name", required=required, callback=_checked_name)


def name_option(help_text: str) -> Callable[[F], F]:
    """Add --name (a model name), checked by the one name rule (archiver.names)."""
    return click.option("--name", "model_name", default=None, callback=_checked_name, help=help_text)


def version_argument() -> Callable[[F], F]:
    """Add the VERSION argument, checked by the one name rule (archiver.names)."""
    return click.argument("version", callback=_checked_version)


def model_version_option(help_text: str | None = None, *, required: bool = False) -> Callable[[F], F]:
    """Add --version, checked by the one name rule (archiver.names)."""
    return click.option(
        "--version", "version", default=None, required=required, help=help_text, callback=_checked_version
    )


def json_option(help_text: str = "Machine-readable output.") -> Callable[[F], F]:
    """Add --json: machine-readable output instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


public_key_option = click.option(
    "--public-key",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="PEM public key that verifies the archives' signatures (default: the project's key).",
)


def body_options(f: F) -> F:
    """--json DATA / --file PATH: the body of one request (predict, explain)."""
    f = click.option(
        "--file",
        "file_path",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        help="Send this file's bytes as the body (an image, a .json, ...).",
    )(f)
    return click.option("--json", "json_data", default=None, help="Request body as JSON text.")(f)


def payload_options(default_help: str = "") -> Callable[[F], F]:
    """--data JSON / --payload FILE: the bodies of a load test (bench, tune)."""

    def decorate(f: F) -> F:
        f = click.option(
            "--payload",
            type=click.Path(dir_okay=False, exists=True),
            default=None,
            help="Request bodies: a .jsonl file (one per line, cycled), one JSON file, or any other "
            "file sent as raw bytes (an image, a .npy)" + default_help + ".",
        )(f)
        return click.option("--data", "json_data", default=None, help="Request body as JSON text.")(f)

    return decorate


def engine_option(help_text: str) -> Callable[[F], F]:
    """Add --engine (auto, python or wrk): the load generator of bench and tune."""
    return click.option(
        "--engine", type=click.Choice(["auto", "python", "wrk"]), default="auto", show_default=True, help=help_text
    )


def request_body(json_data: str | None, file_path: str | None) -> Any:
    """The body of --json DATA (parsed) or --file PATH (sent as is)."""
    if (json_data is None) == (file_path is None):
        raise click.UsageError("give exactly one of --json DATA or --file PATH")
    if json_data is not None:
        try:
            return json.loads(json_data)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from None
    return Path(file_path)  # type: ignore[arg-type]


def load_bodies(json_data: str | None, payload: str | None) -> list[Any]:
    """Return the request bodies of a load test, from --data or --payload.

    --data is JSON text; --payload is a .jsonl file (one body per line; a golden set's rows give their
    "input"), one .json, or any other file sent as raw bytes.
    """
    if (json_data is None) == (payload is None):
        raise click.UsageError("give one of --data JSON or --payload FILE")
    if payload is None:
        return [request_body(json_data, None)]
    path = Path(payload)
    if path.suffix not in (".json", ".jsonl"):
        return [path]
    text = path.read_text(encoding="utf-8")
    try:
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else [json.loads(text)]
        )
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from None
    if not rows:
        raise click.BadParameter(f"{path} has no request bodies", param_hint="--payload")
    return [r["input"] if isinstance(r, dict) and set(r) >= {"input", "expected"} else r for r in rows]


def check_range(low: int, high: int | None, low_name: str = "--min", high_name: str = "--max") -> None:
    """Refuse a --max below its --min (a usage error that names the option)."""
    if high is not None and high < low:
        raise click.BadParameter(f"{high_name} ({high}) is below {low_name} ({low})", param_hint=high_name)


def stdout_write(data: str | bytes) -> None:
    """Write text or bytes to stdout as they come (a streamed answer), and flush."""
    if isinstance(data, bytes):
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data)
    sys.stdout.flush()
