"""`torchship train | package | verify`: from a checkpoint to a signed, verified archive."""

from __future__ import annotations

from pathlib import Path

import click

from torchship import errors as E

from .base import Ctx, emit, json_option, model_version_option, name_argument, name_option, pass_ctx, public_key_option
from .table import render

model_key_option = click.option(
    "--model-key",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A model keyring file (default: the project's, .torchship/keys/model-keys.json).",
)


@click.command()
@name_argument()
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Override the number of epochs.")
@click.option("--quick", is_flag=True, help="Short training, as CI and the demo run it.")
@click.option(
    "--shuffle-labels",
    is_flag=True,
    help="Train on shuffled labels: a deliberately bad model, to see a rollout reject it.",
)
@pass_ctx
def train(c: Ctx, name: str, seed: int, epochs: int | None, quick: bool, shuffle_labels: bool) -> None:
    """Train an example model into checkpoints/NAME/<run>/."""
    result = c.project.train(name, seed=seed, epochs=epochs, quick=quick, shuffle_labels=shuffle_labels)
    figures = ", ".join(f"{k} {v}" for k, v in result.metrics.items())
    click.echo(f"trained {name} in {result.seconds:.1f} s: {figures}\ncheckpoint: {result.run_dir}")


@click.command()
@name_argument(required=False)
@model_version_option("Archive version (default: the next free one).")
@click.option(
    "--checkpoint",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Checkpoint folder: a training run (model.safetensors + meta.json). Default: the newest run of "
    "NAME (an example's, or the checkpoints folder torchship.yaml records for it).",
)
@click.option("--force", is_flag=True, help="Replace an existing archive of this version.")
@click.option(
    "--handler",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A handler file of your own (default: the one torchship.yaml records for NAME). torchship's "
    "handler base is packed when it imports it.",
)
@name_option("Model name, with --handler (or give NAME).")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Weights file, with --handler and no --checkpoint (safetensors, or a .pt that loads with weights_only).",
)
@click.option(
    "--model-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Model definition file, with --handler.",
)
@click.option(
    "--extra-file",
    "extra_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="More files for the archive (repeatable), with --handler.",
)
@click.option(
    "--model-config",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="model-config.yaml, with --handler (its types are checked).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch threads per worker (model-config handler.threads; `torchship tune` finds it).",
)
@click.option(
    "--requirements",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A requirements file (names and version specifiers only), with --handler: packed and recorded; "
    "deploy refuses the archive when the server's Python does not meet it (never installs it).",
)
@click.option(
    "--no-import-check",
    "import_check",
    flag_value=False,
    default=True,
    help="With --handler: skip checking that the handler and model file import in the server's Python "
    "(for an archive built on another machine than the server's).",
)
@click.option(
    "--encrypt",
    is_flag=True,
    help="Encrypt the safetensors weights at rest (AES-256-GCM) under the project's model key, made on first "
    "use (also `encrypt: true` in torchship.yaml).",
)
@model_key_option
@click.option(
    "--optimize",
    type=click.Choice(["auto", "int8-dynamic", "channels-last"]),
    default=None,
    help="Serve a cheaper variant, made by the worker at load from the same signed weights, only if it keeps "
    "the run's held-out accuracy within 0.5 points (an example model's training run): int8-dynamic, "
    "channels-last, or auto (the fastest that pays, measured here; else the original). Recorded in the "
    "provenance.",
)
@pass_ctx
def package(
    c: Ctx,
    name: str | None,
    version: str | None,
    checkpoint: str | None,
    force: bool,
    handler: str | None,
    model_name: str | None,
    weights: str | None,
    model_file: str | None,
    extra_files: tuple[str, ...],
    model_config: str | None,
    threads: int | None,
    requirements: str | None,
    import_check: bool,
    encrypt: bool,
    model_key: str | None,
    optimize: str | None,
) -> None:
    """Build and sign model_store/NAME-VERSION.mar from a checkpoint (or from your own handler).

    An example model needs only NAME. A model of your own: NAME --checkpoint DIR --handler handler.py
    --model-file model.py, or only NAME when torchship.yaml records it (its newest run is packaged).
    With a handler, the handler and model file are first imported in the server's Python, as TorchServe
    will import them; each module it lacks is named with how to add it, and nothing is built.
    With --encrypt the weights are encrypted at rest; the server torchship starts hands its workers the key.
    """
    from torchship import archiver

    if name and model_name and name != model_name:
        raise click.UsageError(f"two names given: {name} and --name {model_name}")
    name = name or model_name
    if not name:
        raise click.UsageError("give the NAME of the model (or --handler with --name)")
    own = handler is not None or name in c.project.recorded_models()
    if not own and (requirements or not import_check):
        raise click.UsageError(
            "--requirements and --no-import-check go with --handler (or a model recorded in torchship.yaml)"
        )
    recorded = c.project.recorded_models().get(name)
    if model_key and not (encrypt or (recorded is not None and recorded.encrypt)):
        raise click.UsageError("--model-key goes with --encrypt")
    result = c.project.package(
        name,
        version=version,
        checkpoint=checkpoint,
        force=force,
        handler=handler,
        weights=weights,
        model_file=model_file,
        extra_files=extra_files,
        model_config=model_config,
        threads=threads,
        requirements=requirements,
        import_check=import_check,
        encrypt=encrypt,
        model_key=model_key,
        optimize=optimize,
    )
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    prov = result.provenance
    source = _shown(result.checkpoint) if result.checkpoint else prov["handler"]
    using = f" with {prov['handler']}" if own and result.checkpoint else ""
    click.echo(
        f"packaged {prov['model']['name']} {prov['model']['version']} from {source}{using} -> {result.path} "
        f"({result.path.stat().st_size / 1e6:.2f} MB)"
    )
    if result.handler_base:
        click.echo(f"packed torchship's handler base, which the code imports: {', '.join(result.handler_base)}")
    for member, how in (prov.get("encryption") or {}).get("members", {}).items():
        n = how["chunks"]
        click.echo(
            f"encrypted {how['plaintext']['name']} -> {member} ({how['cipher']}, {n} chunk{'s' if n != 1 else ''} "
            f"of {how['chunk_size'] / 2**20:g} MiB) under model key {how['key_id']}"
        )
    if optimize:
        _echo_optimize((prov.get("checkpoint") or {}).get("optimize") or {})
    click.echo(f"build digest {result.digest}; signed: {archiver.signature_path(result.path).name}")


def _echo_optimize(record: dict) -> None:
    """The accuracy gate's trials and what it chose (the provenance's checkpoint.optimize)."""
    metric = record.get("metric")
    rows = [["original", f"{record.get('original', 0):.4f}", "", "", "", ""]]
    for t in record.get("trials", []):
        speed = t.get("speedup") or {}
        rows.append(
            [
                t["variant"],
                f"{t['metric']:.4f}",
                f"{t['delta_points']:+.2f}",
                "yes" if t["eligible"] else "no",
                f"{speed['1']:.2f}x" if "1" in speed else "-",
                f"{speed['8']:.2f}x" if "8" in speed else "-",
            ]
        )
    click.echo(render(["variant", str(metric), "points", "eligible", "speed b1", "speed b8"], rows))
    chosen = record.get("variant") or "none (the original)"
    click.echo(f"optimize: {chosen}: {record.get('reason')} ({record.get('held_out')} held-out examples)")


def _shown(path: Path) -> str:
    """A path relative to the current folder when it is inside it (as the user typed it), else in full."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@click.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@public_key_option
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="Accept an archive without signature/provenance (third-party); safety checks still run.",
)
@model_key_option
@json_option()
@pass_ctx
def verify(
    c: Ctx, archive: str, public_key: str | None, allow_unsigned: bool, model_key: str | None, as_json: bool
) -> None:
    """Check an archive's layout, safety, signature, every member's digest, and its weights.

    Encrypted weights are checked without a key (keys member, headers, sizes, provenance), and decrypted
    and checked too with the project's model keyring when it has one, or --model-key FILE.
    """
    report = c.project.verify(archive, public_key=public_key, allow_unsigned=allow_unsigned, model_key=model_key)
    if as_json:
        emit(report.to_dict())
    else:
        marks = {True: "ok", False: "FAILED", None: "skipped"}
        click.echo(render(["check", "result", "detail"], [[ch.name, marks[ch.ok], ch.detail] for ch in report.checks]))
        if report.provenance and report.provenance.get("checkpoint"):
            ck = report.provenance["checkpoint"]
            git = f"git {ck['git_commit']}" if ck.get("git_commit") else "no git commit recorded"
            click.echo(f"\nbuilt from run {ck.get('run')} ({git}), metrics {ck.get('metrics')}")
        if report.provenance and report.provenance.get("requirements") is not None:
            listed = ", ".join(report.provenance["requirements"]) or "none"
            click.echo(f"requirements (checked against the server's Python at deploy): {listed}")
    if not report.ok:
        bad = report.failure
        why = f"({bad.name}): {bad.detail}" if bad is not None else ": no check ran"
        raise E.VerificationError(f"{Path(archive).name} failed verification {why}")
    if allow_unsigned and any(ch.ok is None for ch in report.checks):
        click.echo("WARNING: accepted without signature or provenance (--allow-unsigned)", err=True)
