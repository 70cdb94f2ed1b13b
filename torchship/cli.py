"""The `torchship` command line. Library errors become one line on stderr and an exit code per kind.

Exit codes: 0 ok, 1 other failure, 2 usage, 3 server unreachable or not started, 4 not found,
5 conflict (exists already, or forbidden), 6 unauthorized, 7 bad input, 8 archive or verification
failure, 9 timed out, 10 server error, 11 rollout rejected.
"""

from __future__ import annotations

import json
import sys
import time
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
    (E.RolloutFailed, 11),
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
    def registry(self):
        if getattr(self, "_registry", None) is None:
            from .registry import Registry

            self._registry = Registry(self.project.state_dir / "registry.db")
        return self._registry

    def public_key(self, given: str | None) -> Path:
        from archiver import public_key_path

        return Path(given) if given else public_key_path(self.project.key_dir)

    @property
    def store(self) -> Path:
        from .config import ServerConfig

        return ServerConfig.load(self.config_path).model_store if self.config_path.is_file() else self.project.model_store


pass_ctx = click.make_pass_decorator(Ctx)


def _checked_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a model NAME (or --name) must pass the one rule (archiver.names). It runs
    while the command line is parsed, so a bad name fails before any file is read or any request
    is sent: InvalidName is a ValueError, one line on stderr and exit 7 (bad input)."""
    from archiver.names import check_name

    return None if value is None else check_name(value)


def _checked_version(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a model VERSION (or --version) must pass the one rule (archiver.names)."""
    from archiver.names import check_version

    return None if value is None else check_version(value)


def name_argument(required: bool = True):
    return click.argument("name", required=required, callback=_checked_name)


def model_version_option(help_text: str | None = None, *, required: bool = False):
    return click.option("--version", "version", default=None, required=required, help=help_text,
                        callback=_checked_version)


public_key_option = click.option(
    "--public-key", type=click.Path(dir_okay=False, exists=True), default=None,
    help="PEM public key that verifies the archives' signatures (default: the project's key).")


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
@name_argument()
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Override the number of epochs.")
@click.option("--quick", is_flag=True, help="Short training, as CI and the demo run it.")
@click.option("--shuffle-labels", is_flag=True, help="Train on shuffled labels: a deliberately bad model, "
              "to see a rollout reject it.")
@pass_ctx
def train(c: Ctx, name: str, seed: int, epochs: int | None, quick: bool, shuffle_labels: bool) -> None:
    """Train an example model into checkpoints/NAME/<run>/."""
    import train as trainers_pkg

    trainers = trainers_pkg.trainers()
    if name not in trainers:
        raise E.TrainingError(f"no training script for {name!r}; known: {', '.join(sorted(trainers))}")
    extra = {"shuffle_labels": True} if shuffle_labels else {}
    result = trainers[name](c.project.checkpoints, seed=seed, epochs=epochs, quick=quick, **extra)
    figures = ", ".join(f"{k} {v}" for k, v in result.metrics.items())
    click.echo(f"trained {name} in {result.seconds:.1f} s: {figures}\ncheckpoint: {result.run_dir}")


@cli.command()
@name_argument(required=False)
@model_version_option("Archive version (default: the next free one).")
@click.option("--checkpoint", type=click.Path(file_okay=False, exists=True), default=None,
              help="Checkpoint folder (default: the newest run of NAME).")
@click.option("--force", is_flag=True, help="Replace an existing archive of this version.")
@click.option("--handler", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A handler file of your own (packages a third-party model; needs --name).")
@click.option("--name", "model_name", default=None, callback=_checked_name, help="Model name, with --handler.")
@click.option("--weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Weights file, with --handler (safetensors, or a .pt that loads with weights_only).")
@click.option("--model-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Model definition file, with --handler.")
@click.option("--extra-file", "extra_files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="More files for the archive (repeatable), with --handler.")
@click.option("--model-config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="model-config.yaml, with --handler (its types are checked).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads per worker (model-config handler.threads; `torchship tune` finds it).")
@pass_ctx
def package(c: Ctx, name: str | None, version: str | None, checkpoint: str | None, force: bool,
            handler: str | None, model_name: str | None, weights: str | None, model_file: str | None,
            extra_files: tuple[str, ...], model_config: str | None, threads: int | None) -> None:
    """Build and sign model_store/NAME-VERSION.mar from a checkpoint (or from your own handler)."""
    import archiver

    from .versions import next_version

    if handler:
        if name or checkpoint:
            raise click.UsageError("give either an example NAME (with --checkpoint) or --handler with --name")
        if not model_name:
            raise click.UsageError("--handler needs --name")
        import yaml

        config = yaml.safe_load(Path(model_config).read_text()) if model_config else {}
        version = version or next_version(c.store, model_name)
        spec = archiver.ArchiveSpec(model_name, version, Path(handler), Path(weights) if weights else None,
                                    Path(model_file) if model_file else None, tuple(Path(p) for p in extra_files),
                                    config or {})
        source = handler
    else:
        if not name:
            raise click.UsageError("give the NAME of an example model, or --handler with --name")
        from train.common import latest_run

        run = Path(checkpoint) if checkpoint else latest_run(c.project.checkpoints, name)
        if run is None:
            raise E.ArchiveError(f"no checkpoint of {name} in {c.project.checkpoints}: "
                                 f"run `torchship train {name}` first")
        version = version or next_version(c.store, name)
        spec = archiver.example_spec(name, run, version)
        source = str(run)
    if threads is not None:
        import dataclasses

        handler_config = {**(spec.model_config.get("handler") or {}), "threads": threads}
        spec = dataclasses.replace(spec, model_config={**spec.model_config, "handler": handler_config})
    result = archiver.package(spec, c.store, c.project.key_dir, force=force)
    c.registry.record_archive(name=spec.name, version=version, digest=result.digest, path=result.path,
                              provenance=result.provenance, signature=archiver.signature_path(result.path))
    click.echo(f"packaged {spec.name} {version} from {source} -> {result.path} "
               f"({result.path.stat().st_size / 1e6:.2f} MB)\n"
               f"build digest {result.digest}; signed: {archiver.signature_path(result.path).name}")


@cli.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@public_key_option
@click.option("--allow-unsigned", is_flag=True,
              help="Accept an archive without signature/provenance (third-party); safety checks still run.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def verify(c: Ctx, archive: str, public_key: str | None, allow_unsigned: bool, as_json: bool) -> None:
    """Check an archive's signature, every member's digest, its safety, and its weights."""
    import archiver

    report = archiver.verify_archive(Path(archive), public_key=c.public_key(public_key), allow_unsigned=allow_unsigned)
    if as_json:
        emit(report.to_dict())
    else:
        marks = {True: "ok", False: "FAILED", None: "skipped"}
        click.echo(render(["check", "result", "detail"], [[ch.name, marks[ch.ok], ch.detail] for ch in report.checks]))
        if report.provenance and report.provenance.get("checkpoint"):
            ck = report.provenance["checkpoint"]
            click.echo(f"\nbuilt from run {ck.get('run')} (git {ck.get('git_commit')}), metrics {ck.get('metrics')}")
    if not report.ok:
        bad = report.failure
        raise E.VerificationError(f"{Path(archive).name} failed verification ({bad.name}): {bad.detail}")
    if allow_unsigned and any(ch.ok is None for ch in report.checks):
        click.echo("WARNING: accepted without signature or provenance (--allow-unsigned)", err=True)


@cli.command()
@name_argument()
@model_version_option("Version to deploy (default: the newest archive).")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Workers to start.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1))
@click.option("--max-batch-delay", default=None, type=click.IntRange(min=0), help="Milliseconds.")
@click.option("--default", "make_default", is_flag=True, help="Make this version the default.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait until ready.")
@public_key_option
@click.option("--allow-unsigned", is_flag=True,
              help="DANGER: deploy a third-party archive without signature/provenance (safety checks still run).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def deploy(c: Ctx, name: str, version: str | None, workers: int | None, batch_size: int | None,
           max_batch_delay: int | None, make_default: bool, timeout: float, public_key: str | None,
           allow_unsigned: bool, as_json: bool) -> None:
    """Verify an archive of the model store, register it, and wait until it serves."""
    if allow_unsigned:
        click.echo("WARNING: --allow-unsigned: the archive's signature and provenance are not checked", err=True)
    from archiver import EXAMPLES

    from .deploy import deploy as do_deploy

    serving = EXAMPLES[name].serving if name in EXAMPLES else {}
    result = do_deploy(c.client, c.store, name, version,
                       workers=workers or serving.get("workers", 1),
                       batch_size=batch_size or serving.get("batch_size"),
                       max_batch_delay=max_batch_delay if max_batch_delay is not None else serving.get("max_batch_delay"),
                       make_default=make_default, timeout=timeout, public_key=c.public_key(public_key),
                       allow_unsigned=allow_unsigned)
    d = result.description
    if result.action == "registered":
        c.registry.record(name, d.version, "registered", via="deploy", workers=d.min_workers)
    if make_default:
        c.registry.record(name, d.version, "default_set", via="deploy")
    if as_json:
        emit({"action": result.action, "seconds": round(result.seconds_to_ready, 2), **d.to_dict()})
    else:
        click.echo(f"{name} {d.version} {result.action}: {d.ready_workers} worker(s) ready, batch {d.batch_size} "
                   f"/ {d.max_batch_delay} ms, default: {'yes' if d.is_default else 'no'} "
                   f"({result.seconds_to_ready:.1f} s)")


# ---------------------------------------------------------------- inference

@cli.command()
@name_argument()
@model_version_option()
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
            sys.stdout.write(chunk)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    answer = c.client.predict(name, data, version=version)
    if isinstance(answer, bytes):
        sys.stdout.buffer.write(answer)
    else:
        emit(answer)


def _load_bodies(json_data: str | None, payload: str | None) -> list[Any]:
    """Request bodies of a load test: --data JSON text, or --payload: .jsonl (one body per line; a
    golden set's rows give their "input"), one .json, or any other file sent as raw bytes."""
    if (json_data is None) == (payload is None):
        raise click.UsageError("give one of --data JSON or --payload FILE")
    if payload is None:
        return [_request_body(json_data, None)]
    path = Path(payload)
    if path.suffix not in (".json", ".jsonl"):
        return [path]
    text = path.read_text(encoding="utf-8")
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
            else [json.loads(text)]
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--payload") from None
    if not rows:
        raise click.BadParameter(f"{path} has no request bodies", param_hint="--payload")
    return [r["input"] if isinstance(r, dict) and set(r) >= {"input", "expected"} else r for r in rows]


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
@name_argument()
@model_version_option()
@click.option("--min", "min_workers", required=True, type=click.IntRange(min=1))
@click.option("--max", "max_workers", required=True, type=click.IntRange(min=1))
@click.option("--target-queue-ms", type=click.FloatRange(min=0.1), default=50.0, show_default=True,
              help="Scale up when requests wait longer than this in the queue.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Seconds per tick.")
@click.option("--up-cooldown", type=click.FloatRange(min=0), default=3.0, show_default=True)
@click.option("--down-cooldown", type=click.FloatRange(min=0), default=15.0, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0.1), default=None, help="Stop after this many seconds.")
@pass_ctx
def autoscale(c: Ctx, name: str, version: str | None, min_workers: int, max_workers: int, target_queue_ms: float,
              interval: float, up_cooldown: float, down_cooldown: float, duration: float | None) -> None:
    """Scale a model's workers within [min, max] from its queue time; Ctrl-C to stop."""
    from .autoscale import Autoscaler

    if max_workers < min_workers:
        raise click.BadParameter(f"--max ({max_workers}) is below --min ({min_workers})", param_hint="--max")

    def log(line: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {name}: {line}")

    scaler = Autoscaler(c.client, name, min_workers, max_workers, version=version, target_queue_ms=target_queue_ms,
                        interval=interval, up_cooldown=up_cooldown, down_cooldown=down_cooldown, log=log)
    log(f"autoscaling within [{min_workers}, {max_workers}], target queue {target_queue_ms:g} ms")
    for d in scaler.run(duration=duration, handle_signals=True):
        c.registry.record(name, version, "scaled", via="autoscale", workers=d.workers_to, reason=d.reason)


@cli.command("export")
@click.argument("target", type=click.Choice(["k8s", "kserve"]))
@click.option("--deploy", "deploy_file", type=click.Path(dir_okay=False, exists=True), default="deploy.yaml",
              show_default=True, help="Desired-state file: which models and versions.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option("--name", default="torchship", show_default=True, help="Name of the Kubernetes objects.")
@click.option("--image", default=None, help="TorchServe image (default pytorch/torchserve:0.12.0-cpu).")
@click.option("--max-replicas", type=click.IntRange(min=1), default=4, show_default=True, help="k8s: HPA maximum.")
@click.option("--storage-uri", default=None, help="kserve: where the model-store folder will be (default pvc://NAME-model-store).")
@click.option("--canary-percent", type=click.IntRange(0, 100), default=None, help="kserve: canaryTrafficPercent.")
@public_key_option
@pass_ctx
def export_cmd(c: Ctx, target: str, deploy_file: str, out: str, name: str, image: str | None, max_replicas: int,
               storage_uri: str | None, canary_percent: int | None, public_key: str | None) -> None:
    """Write Kubernetes or KServe manifests and the model-store layout (verified archives)."""
    from .desired import load_desired
    from .export import IMAGE, export

    written = export(target, load_desired(deploy_file), c.store, Path(out), public_key=c.public_key(public_key),
                     name=name, image=image or IMAGE, max_replicas=max_replicas, storage_uri=storage_uri,
                     canary_percent=canary_percent)
    click.echo(f"{len(written['archives'])} verified archive(s) -> {Path(out) / 'model-store' / 'model-store'}")
    for path in written["config"] + written["manifests"]:
        click.echo(f"wrote {path}")


@cli.command()
@name_argument()
@click.option("--slo-p99-ms", type=click.FloatRange(min=0.1), required=True, help="The p99 latency budget.")
@model_version_option("Archive version (default: the newest).")
@click.option("--data", "json_data", default=None, help="Request body as JSON text.")
@click.option("--payload", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Request bodies: .jsonl (cycled), .json, or a raw file such as an image or .npy "
                   "(default: the inputs of tests/golden/NAME.jsonl).")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0.5), default=5.0, show_default=True, help="Per trial.")
@click.option("--max-workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--cores", type=click.IntRange(min=1), default=None,
              help="Cores the server may use, for the threads step (default: this machine's).")
@click.option("--engine", type=click.Choice(["auto", "python", "wrk"]), default="auto", show_default=True,
              help="Load generator of each trial: wrk (with --data) when installed, else Python threads.")
@click.option("--write", "write_file", type=click.Path(dir_okay=False), default=None,
              help="Write the winner into this desired-state file (e.g. deploy.yaml).")
@public_key_option
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tune(c: Ctx, name: str, slo_p99_ms: float, version: str | None, json_data: str | None, payload: str | None,
         concurrency: int, seconds: float, max_workers: int, cores: int | None, engine: str,
         write_file: str | None, public_key: str | None, as_json: bool) -> None:
    """Search batching, workers and threads for the highest throughput whose p99 meets the budget."""
    import yaml

    from .tune import tune as do_tune
    from .versions import latest_version

    version = version or latest_version(c.store, name)
    if version is None:
        raise E.ArchiveError(f"no archive of {name} in {c.store}: run `torchship package {name}` first")
    golden = c.project.root / "tests" / "golden" / f"{name}.jsonl"
    if not (json_data or payload or golden.is_file()):
        raise click.UsageError(f"no requests to tune with: give --data or --payload ({golden} is missing)")
    bodies = _load_bodies(json_data, payload or (None if json_data else str(golden)))
    from . import wrk

    if engine == "auto":
        engine = "wrk" if wrk.available() and len(bodies) == 1 else "python"
    trials, best = do_tune(c.client, c.store, name, version, bodies, slo_p99_ms=slo_p99_ms, concurrency=concurrency,
                           seconds=seconds, max_workers=max_workers, cores=cores, public_key=c.public_key(public_key),
                           key_dir=c.project.key_dir,
                           log=(lambda line: None) if as_json else click.echo, engine=engine)
    settings = {"versions": [version], "default": version, "workers": {"min": best.workers, "max": best.workers},
                "batch_size": best.batch_size, "max_batch_delay_ms": best.max_batch_delay}
    from .tune import packaged_threads

    repackage = None
    if best.threads != packaged_threads(c.store / f"{name}-{version}.mar"):
        # threads live in the archive's model-config, not in anything TorchServe's API can set
        repackage = f"torchship package {name} --threads {best.threads}"
    if write_file:
        path = Path(write_file)
        doc = yaml.safe_load(path.read_text()) if path.exists() else {"models": {}}
        current = (doc.get("models") or {}).get(name) or {}
        doc.setdefault("models", {})[name] = {**current, **{k: v for k, v in settings.items()
                                                            if k not in ("versions", "default") or k not in current}}
        from .desired import parse_desired

        parse_desired(doc, str(path))  # never write a file apply would refuse
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if as_json:
        emit({"trials": [t.to_dict() for t in trials], "best": best.to_dict(), "meets_slo": best.meets(slo_p99_ms),
              "deploy_yaml": {"models": {name: settings}}, "repackage": repackage})
        return
    click.echo()
    click.echo(render(["workers", "threads", "batch", "delay ms", "req/s", "p50 ms", "p99 ms", "runs", "meets SLO"],
                      [[t.workers, t.threads, t.batch_size, t.max_batch_delay, t.throughput, t.p50_ms, t.p99_ms,
                        t.runs, "yes" if t.meets(slo_p99_ms) else "no"] for t in trials]))
    verdict = "fastest within" if best.meets(slo_p99_ms) else "NOTHING met; lowest p99 for"
    click.echo(f"\n{verdict} p99 {slo_p99_ms:g} ms: workers {best.workers}, threads {best.threads}, "
               f"batch {best.batch_size}, delay {best.max_batch_delay} ms -> {best.throughput} req/s, "
               f"p99 {best.p99_ms} ms")
    click.echo(("written into " + write_file) if write_file else yaml.safe_dump({"models": {name: settings}},
                                                                                sort_keys=False))
    if repackage:
        click.echo(f"threads per worker are part of the archive: `{repackage}` builds a version with "
                   f"{best.threads}, then deploy that version with these settings")


@cli.command("bench")
@name_argument()
@model_version_option()
@click.option("--data", "json_data", default=None, help="Request body as JSON text.")
@click.option("--payload", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Request bodies: a .jsonl file (one per line, cycled), one JSON file, or any other file sent "
                   "as raw bytes (an image, a .npy).")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds.")
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=None,
              help="Send this many requests instead of running for --duration.")
@click.option("--stream", is_flag=True, help="Streaming model: report time to first token and tokens/s.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: latency over time and its histogram (python engine).")
@click.option("--engine", type=click.Choice(["auto", "python", "wrk"]), default="auto", show_default=True,
              help="Load generator: wrk (C, when installed) or Python threads; auto picks wrk for plain tests.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def bench_cmd(c: Ctx, name: str, version: str | None, json_data: str | None, payload: str | None, concurrency: int,
              duration: float, n_requests: int | None, stream: bool, plot: str | None, engine: str,
              as_json: bool) -> None:
    """Load-test a model: throughput, latency percentiles, errors by status (TTFT when streaming)."""
    from .bench import bench, bench_stream, plot_latencies

    bodies = _load_bodies(json_data, payload)
    if stream:
        result = bench_stream(c.client, name, bodies, version=version, concurrency=concurrency, duration=duration,
                              requests=n_requests)
    else:
        if engine == "auto" and (plot or len(bodies) > 1):
            engine = "python"  # wrk sends one body and gives no per-request latencies to plot
        result, load = bench(c.client, name, bodies, version=version, concurrency=concurrency, duration=duration,
                             requests=n_requests, keep=True, engine=engine)
        if plot and load is not None:
            plot_latencies(load, Path(plot), title=f"{name}: concurrency {concurrency}")
            result["plot"] = plot
    if as_json:
        emit(result)
    else:
        click.echo(render(["figure", "value"], [[k, v] for k, v in result.items() if k not in ("first_errors",)]))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def ping(c: Ctx, as_json: bool) -> None:
    """The server's health."""
    health = c.client.ping()
    emit({"status": health}) if as_json else click.echo(health)


@cli.command()
@name_argument()
@model_version_option()
@click.option("--json", "json_data", default=None, help="Request body as JSON text.")
@click.option("--file", "file_path", type=click.Path(dir_okay=False, exists=True), default=None)
@pass_ctx
def explain(c: Ctx, name: str, version: str | None, json_data: str | None, file_path: str | None) -> None:
    """An explanation of one prediction (if the model's handler offers one)."""
    emit(c.client.explain(name, _request_body(json_data, file_path), version=version))


@cli.command()
@name_argument(required=False)
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
@name_argument(required=False)
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
@name_argument()
@model_version_option("A version, or 'all' (default: the default version).")
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


# ---------------------------------------------------------------- version control

@cli.command()
@name_argument()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def history(c: Ctx, name: str, as_json: bool) -> None:
    """Versions with their lineage (training run, data, metrics) and deployment events, newest first."""
    archives = c.registry.archives(name)
    events = c.registry.events(name)
    try:
        live = {d.version: d for d in c.client.versions(name)}
    except E.TorchServeError:
        live = None
    if as_json:
        emit({"name": name, "versions": [{**a.to_dict(), "registered": live is not None and a.version in live,
                                          "default": bool(live and a.version in live and live[a.version].is_default)}
                                         for a in archives],
              "events": [e.to_dict() for e in events]})
        return
    if not archives and not events:
        raise E.TorchServeError(f"no history for {name}: package it first (torchship package {name})")

    def state(version: str) -> str:
        if live is None:
            return "?"
        if version not in live:
            return ""
        return "default" if live[version].is_default else "registered"

    click.echo(f"versions of {name}, newest first" + ("" if live is not None else " (server not reachable)"))
    click.echo(render(["version", "server", "digest", "training run", "data", "metrics", "git"],
                      [[a.version, state(a.version), a.digest[:19], a.checkpoint_run, (a.data_fingerprint or "")[:19],
                        " ".join(f"{k}={v}" for k, v in a.metrics.items()), (a.git_commit or "")[:12]]
                       for a in archives]))
    click.echo(f"\nevents of {name}, newest first")
    click.echo(render(["time", "version", "event", "detail"],
                      [[e.time[:19].replace("T", " "), e.version or "", e.kind,
                        " ".join(f"{k}={v}" for k, v in e.detail.items())[:100]] for e in events]))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def plan(c: Ctx, file: str, as_json: bool) -> None:
    """Show what `apply FILE` would change on the server."""
    from .desired import load_desired, plan as make_plan

    actions = make_plan(c.client, load_desired(file))
    if as_json:
        emit([a.to_dict() for a in actions])
    elif actions:
        click.echo(render(["action", "model", "version", "detail"], [[a.kind, a.model, a.version, a.detail]
                                                                    for a in actions]))
    else:
        click.echo("no changes: the server matches " + file)


@cli.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@public_key_option
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def apply_cmd(c: Ctx, file: str, public_key: str | None, as_json: bool) -> None:
    """Converge the server to FILE (idempotent; a second run changes nothing)."""
    from .desired import apply as do_apply, load_desired

    desired = load_desired(file)
    say = None if as_json else (lambda a: click.echo(f"  {a}"))
    report = do_apply(c.client, c.store, desired, public_key=c.public_key(public_key), registry=c.registry,
                      progress=say)
    if as_json:
        emit(report.to_dict())
    elif not report.done and report.ok:
        click.echo("no changes: the server matches " + file)
    elif report.ok:
        click.echo(f"applied {len(report.done)} change(s) from {file}")
    if not report.ok:
        not_done = ", ".join(f"{a.kind} {a.model} {a.version}" for a in report.not_done) or "nothing else"
        raise E.TorchServeError(f"apply stopped at '{report.failed}': {report.error}. Done: {len(report.done)} "
                                f"change(s); not done: {not_done}. The default version keeps serving.")


@cli.command()
@name_argument()
@model_version_option("The version to roll out.", required=True)
@click.option("--golden", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Golden set (JSON lines of input + expected); default tests/golden/NAME.jsonl.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=None,
              help="Golden accuracy needed (default: no more than 0.02 below the current default's).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Share of golden inputs on which the new version must agree with the current default.")
@click.option("--max-p99-ms", type=click.FloatRange(min=0), default=None, help="Latency budget under load.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--requests", "load_requests", type=click.IntRange(min=1), default=200, show_default=True,
              help="Requests of the latency check.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True)
@public_key_option
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def rollout(c: Ctx, name: str, version: str, golden: str | None, min_accuracy: float | None,
            min_agreement: float | None, max_p99_ms: float | None, warmup: int, load_requests: int,
            concurrency: int, public_key: str | None, as_json: bool) -> None:
    """Guarded promotion of VERSION with automatic rollback (see the README)."""
    from .rollout import load_golden, rollout as do_rollout

    golden_path = Path(golden) if golden else c.project.root / "tests" / "golden" / f"{name}.jsonl"
    if not golden_path.is_file():
        raise click.UsageError(f"no golden set at {golden_path}: give --golden FILE")
    report = do_rollout(c.client, c.store, name, version, golden=load_golden(golden_path),
                        min_accuracy=min_accuracy, min_agreement=min_agreement, max_p99_ms=max_p99_ms, warmup=warmup,
                        load_requests=load_requests, concurrency=concurrency, public_key=c.public_key(public_key),
                        registry=c.registry, log=None if as_json else click.echo)
    if as_json:
        emit(report.to_dict())
    if not report.passed:
        raise E.RolloutFailed(f"rollout of {name} {version} rejected at the {report.gate} gate: {report.reason}; "
                              f"{report.previous} keeps serving")


@cli.command()
@name_argument()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def rollback(c: Ctx, name: str, as_json: bool) -> None:
    """Make the previous good version the default again."""
    from .rollout import rollback as do_rollback

    old, new = do_rollback(c.client, name, c.registry)
    _say(as_json, f"{name}: default {old} -> {new}", previous=old, default=new)


def _say(as_json: bool, status: str, **fields: Any) -> None:
    emit({"status": status, **fields}) if as_json else click.echo(status)


@cli.command()
@name_argument()
@click.option("--min", "min_workers", required=True, type=click.IntRange(min=0), help="Minimum workers.")
@click.option("--max", "max_workers", default=None, type=click.IntRange(min=0), help="Maximum workers (default: --min).")
@model_version_option()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def scale(c: Ctx, name: str, min_workers: int, max_workers: int | None, version: str | None, as_json: bool) -> None:
    """Set a model version's workers; waits until they run."""
    if max_workers is not None and max_workers < min_workers:
        raise click.BadParameter(f"--max ({max_workers}) is below --min ({min_workers})", param_hint="--max")
    _say(as_json, c.client.scale(name, min_workers=min_workers, max_workers=max_workers, version=version))
    c.registry.record(name, version, "scaled", min_workers=min_workers, max_workers=max_workers or min_workers)


@cli.command("set-default")
@name_argument()
@click.argument("version", callback=_checked_version)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def set_default(c: Ctx, name: str, version: str, as_json: bool) -> None:
    """Make VERSION the version that /predictions/NAME serves."""
    _say(as_json, c.client.set_default(name, version))
    c.registry.record(name, version, "default_set", via="set-default")


@cli.command()
@name_argument()
@model_version_option("Version to remove (default: the default version).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def unregister(c: Ctx, name: str, version: str | None, as_json: bool) -> None:
    """Remove a model version from the server (the archive stays in the store)."""
    _say(as_json, c.client.unregister(name, version))
    c.registry.record(name, version, "unregistered", via="unregister")


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
