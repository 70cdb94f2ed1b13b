"""The `torchship` command line. Library errors become one line on stderr and an exit code per kind.

Exit codes: 0 ok, 1 other failure, 2 usage, 3 server unreachable or not started, 4 not found,
5 conflict (exists already, or forbidden), 6 unauthorized, 7 bad input, 8 archive or verification
failure, 9 timed out, 10 server error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import errors as E
from .config import Project
from .table import render

EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (E.ServerUnreachable, 3), (E.ServerStartError, 3),
    (E.ModelNotFound, 4),
    (E.ModelAlreadyExists, 5), (E.Forbidden, 5),
    (E.Unauthorized, 6),
    (E.BadRequest, 7), (E.PayloadTooLarge, 7), (ValueError, 7),
    (E.ArchiveError, 8), (E.VerificationError, 8),
    (E.ReadinessTimeout, 9),
    (E.ServerError, 10),
    (E.TorchServeError, 1),
]


def exit_code_for(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


class Ctx:
    def __init__(self, config: str | None) -> None:
        self.project = Project.find(Path(config).resolve().parent if config else None)
        self.config_path = Path(config).resolve() if config else self.project.config_path
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import os

            from .client import TorchServe

            if os.environ.get("TS_MANAGEMENT_URL") or os.environ.get("TS_INFERENCE_URL"):
                self._client = TorchServe.from_env()
            else:
                self._client = TorchServe.from_config(self.config_path)
        return self._client

    def server(self):
        from .server import LocalServer

        return LocalServer(self.config_path, self.project.server_dir)

    @property
    def store(self) -> Path:
        from .config import ServerConfig

        return ServerConfig.load(self.config_path).model_store if self.config_path.is_file() else self.project.model_store


pass_ctx = click.make_pass_decorator(Ctx)


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="TorchServe config file (default: config.properties of the project).")
@click.version_option(package_name="torchship")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """torchship: train, package, deploy, version and scale PyTorch models on TorchServe."""
    ctx.obj = Ctx(config)


# ---------------------------------------------------------------- serve

@cli.group()
def serve() -> None:
    """Run the project's local TorchServe (.torchship/server/)."""


@serve.command("start")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for /ping Healthy.")
@pass_ctx
def serve_start(c: Ctx, timeout: float) -> None:
    """Start the server and wait until it is healthy."""
    server = c.server()
    if not server.start(timeout=timeout):
        st = server.status()
        click.echo(f"TorchServe is already running (pid {st.pid}) at {st.inference_url}: {st.detail}")
        return
    st = server.status()
    click.echo(f"TorchServe started (pid {st.pid}): inference {st.inference_url}, management "
               f"{st.management_url}, metrics {st.metrics_url}; logs in {server.log_dir}")


@serve.command("stop")
@pass_ctx
def serve_stop(c: Ctx) -> None:
    """Stop the server and its workers."""
    click.echo("TorchServe stopped." if c.server().stop() else "TorchServe is not running.")


@serve.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def serve_status(c: Ctx, as_json: bool) -> None:
    """Health and models of the server; exits 0 only when it is healthy."""
    st = c.server().status()
    models = _model_rows(c) if st.healthy else []
    if as_json:
        emit({**st.to_dict(), "models": [m.to_dict() for m in models]})
    else:
        click.echo(render(["server", "pid", "health", "inference", "management", "metrics"],
                          [["running" if st.running else "stopped", st.pid or "-", st.detail, st.inference_url,
                            st.management_url, st.metrics_url]]))
        if models:
            click.echo()
            click.echo(_models_table(models))
    if not st.healthy:
        sys.exit(3)


# ---------------------------------------------------------------- train / package / deploy

@cli.command()
@click.argument("name")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Override the number of epochs.")
@click.option("--quick", is_flag=True, help="Short training, as CI and the demo run it.")
@pass_ctx
def train(c: Ctx, name: str, seed: int, epochs: int | None, quick: bool) -> None:
    """Train an example model into checkpoints/NAME/<run>/."""
    import train as trainers_pkg

    trainers = trainers_pkg.trainers()
    if name not in trainers:
        raise E.TrainingError(f"no training script for {name!r}; known: {', '.join(sorted(trainers))}")
    result = trainers[name](c.project.checkpoints, seed=seed, epochs=epochs, quick=quick)
    figures = ", ".join(f"{k} {v}" for k, v in result.metrics.items())
    click.echo(f"trained {name} in {result.seconds:.1f} s: {figures}\ncheckpoint: {result.run_dir}")


@cli.command()
@click.argument("name")
@click.option("--version", "version", default=None, help="Archive version (default: the next free one).")
@click.option("--checkpoint", type=click.Path(file_okay=False, exists=True), default=None,
              help="Checkpoint folder (default: the newest run of NAME).")
@click.option("--force", is_flag=True, help="Replace an existing archive of this version.")
@pass_ctx
def package(c: Ctx, name: str, version: str | None, checkpoint: str | None, force: bool) -> None:
    """Build model_store/NAME-VERSION.mar from a checkpoint."""
    import archiver
    from train.common import latest_run

    from .versions import next_version

    run = Path(checkpoint) if checkpoint else latest_run(c.project.checkpoints, name)
    if run is None:
        raise E.ArchiveError(f"no checkpoint of {name} in {c.project.checkpoints}: run `torchship train {name}` first")
    version = version or next_version(c.store, name)
    path = archiver.build(archiver.example_spec(name, run, version), c.store, force=force)
    click.echo(f"packaged {name} {version} from {run} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")


@cli.command()
@click.argument("name")
@click.option("--version", "version", default=None, help="Version to deploy (default: the newest archive).")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Workers to start.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1))
@click.option("--max-batch-delay", default=None, type=click.IntRange(min=0), help="Milliseconds.")
@click.option("--default", "make_default", is_flag=True, help="Make this version the default.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait until ready.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def deploy(c: Ctx, name: str, version: str | None, workers: int | None, batch_size: int | None,
           max_batch_delay: int | None, make_default: bool, timeout: float, as_json: bool) -> None:
    """Register an archive of the model store and wait until it serves."""
    from archiver import EXAMPLES

    from .deploy import deploy as do_deploy

    serving = EXAMPLES[name].serving if name in EXAMPLES else {}
    result = do_deploy(c.client, c.store, name, version,
                       workers=workers or serving.get("workers", 1),
                       batch_size=batch_size or serving.get("batch_size"),
                       max_batch_delay=max_batch_delay if max_batch_delay is not None else serving.get("max_batch_delay"),
                       make_default=make_default, timeout=timeout)
    d = result.description
    if as_json:
        emit({"action": result.action, "seconds": round(result.seconds_to_ready, 2), **d.to_dict()})
    else:
        click.echo(f"{name} {d.version} {result.action}: {d.ready_workers} worker(s) ready, batch {d.batch_size} "
                   f"/ {d.max_batch_delay} ms, default: {'yes' if d.is_default else 'no'} "
                   f"({result.seconds_to_ready:.1f} s)")


# ---------------------------------------------------------------- inference

@cli.command()
@click.argument("name")
@click.option("--version", "version", default=None)
@click.option("--json", "json_data", default=None, help="Request body as JSON text.")
@click.option("--file", "file_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Send this file's bytes as the body (an image, a .json, ...).")
@click.option("--stream", is_flag=True, help="Print the answer's chunks as they arrive (streaming handlers).")
@pass_ctx
def predict(c: Ctx, name: str, version: str | None, json_data: str | None, file_path: str | None,
            stream: bool) -> None:
    """One prediction; prints the answer."""
    data = _request_body(json_data, file_path)
    if stream:
        for chunk in c.client.stream(name, data, version=version):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        return
    answer = c.client.predict(name, data, version=version)
    if isinstance(answer, bytes):
        sys.stdout.buffer.write(answer)
    else:
        emit(answer)


def _request_body(json_data: str | None, file_path: str | None) -> Any:
    if (json_data is None) == (file_path is None):
        raise click.UsageError("give exactly one of --json DATA or --file PATH")
    if json_data is not None:
        try:
            return json.loads(json_data)
        except ValueError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from None
    return Path(file_path)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def ping(c: Ctx, as_json: bool) -> None:
    """The server's health."""
    health = c.client.ping()
    emit({"status": health}) if as_json else click.echo(health)


@cli.command()
@click.argument("name")
@click.option("--version", "version", default=None)
@click.option("--json", "json_data", default=None, help="Request body as JSON text.")
@click.option("--file", "file_path", type=click.Path(dir_okay=False, exists=True), default=None)
@pass_ctx
def explain(c: Ctx, name: str, version: str | None, json_data: str | None, file_path: str | None) -> None:
    """An explanation of one prediction (if the model's handler offers one)."""
    emit(c.client.explain(name, _request_body(json_data, file_path), version=version))


@cli.command()
@click.argument("name", required=False)
@click.option("--raw", is_flag=True, help="Print the Prometheus text as served.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def metrics(c: Ctx, name: str | None, raw: bool, as_json: bool) -> None:
    """Requests and latency per model, from the metrics port."""
    if raw:
        click.echo(c.client.metrics_text(), nl=False)
        return
    m = c.client.metrics()
    names = [name] if name else m.models()
    rows = [{"model": n, "requests": int(m.requests(n)), "mean_latency_ms": _round(m.mean_latency_ms(n)),
             "mean_queue_ms": _round(m.mean_queue_ms(n))} for n in names]
    if as_json:
        emit(rows)
    elif rows:
        click.echo(render(["model", "requests", "mean latency ms", "mean queue ms"],
                          [[r["model"], r["requests"], r["mean_latency_ms"], r["mean_queue_ms"]] for r in rows]))
    else:
        click.echo("no inference metrics yet")


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)  # NaN -> None


# ---------------------------------------------------------------- management

def _model_rows(c: Ctx, name: str | None = None):
    names = [name] if name else [m.name for m in c.client.list_models()]
    rows = []
    for n in names:
        rows += c.client.versions(n)
    return rows


def _models_table(models) -> str:
    return render(
        ["model", "version", "default", "status", "workers", "min-max", "batch", "delay ms"],
        [[m.name, m.version, "*" if m.is_default else "", m.status, m.ready_workers,
          f"{m.min_workers}-{m.max_workers}", m.batch_size, m.max_batch_delay] for m in models],
    )


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def models(c: Ctx, name: str | None, as_json: bool) -> None:
    """Table of registered models and versions."""
    rows = _model_rows(c, name)
    if as_json:
        emit([m.to_dict() for m in rows])
    elif rows:
        click.echo(_models_table(rows))
    else:
        click.echo("no models registered")


@cli.command()
@click.argument("name")
@click.option("--version", "version", default=None, help="A version, or 'all' (default: the default version).")
@click.option("--json", "as_json", is_flag=True, help="Full description as JSON (workers included).")
@pass_ctx
def describe(c: Ctx, name: str, version: str | None, as_json: bool) -> None:
    """A model version: settings, default flag, and each worker."""
    descs = c.client.describe(name, version)
    if as_json:
        emit([d.to_dict() for d in descs])
        return
    click.echo(_models_table(descs))
    workers = [[d.version, w.id, w.status, w.pid, f"{(w.memory_usage or 0) / 1e6:.0f}"] for d in descs for w in d.workers]
    if workers:
        click.echo()
        click.echo(render(["version", "worker", "status", "pid", "memory MB"], workers))


def _say(as_json: bool, status: str, **fields: Any) -> None:
    emit({"status": status, **fields}) if as_json else click.echo(status)


@cli.command()
@click.argument("name")
@click.option("--min", "min_workers", required=True, type=click.IntRange(min=0), help="Minimum workers.")
@click.option("--max", "max_workers", default=None, type=click.IntRange(min=0), help="Maximum workers (default: --min).")
@click.option("--version", "version", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def scale(c: Ctx, name: str, min_workers: int, max_workers: int | None, version: str | None, as_json: bool) -> None:
    """Set a model version's workers; waits until they run."""
    if max_workers is not None and max_workers < min_workers:
        raise click.BadParameter(f"--max ({max_workers}) is below --min ({min_workers})", param_hint="--max")
    _say(as_json, c.client.scale(name, min_workers=min_workers, max_workers=max_workers, version=version))


@cli.command("set-default")
@click.argument("name")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def set_default(c: Ctx, name: str, version: str, as_json: bool) -> None:
    """Make VERSION the version that /predictions/NAME serves."""
    _say(as_json, c.client.set_default(name, version))


@cli.command()
@click.argument("name")
@click.option("--version", "version", default=None, help="Version to remove (default: the default version).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def unregister(c: Ctx, name: str, version: str | None, as_json: bool) -> None:
    """Remove a model version from the server (the archive stays in the store)."""
    _say(as_json, c.client.unregister(name, version))


def main(argv: list[str] | None = None) -> int:
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
    except (E.TorchServeError, ValueError) as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        return exit_code_for(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    first, _, rest = text.partition("\n")
    return first if not rest.strip() else first + "\n" + rest  # start-up failures keep the log tail


if __name__ == "__main__":
    sys.exit(main())
