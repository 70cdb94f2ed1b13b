"""`torchship plan | apply | rollout | rollback | history | export`: versions over time, and clusters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from torchship import errors as E

from .base import Ctx, emit, json_option, model_version_option, name_argument, pass_ctx, public_key_option, say
from .table import render


@click.command()
@name_argument()
@json_option()
@pass_ctx
def history(c: Ctx, name: str, as_json: bool) -> None:
    """Versions with their lineage (training run, data, metrics) and deployment events, newest first."""
    h = c.project.history(name)
    if as_json:
        emit(h.to_dict())
        return
    if not h.versions and not h.events:
        raise E.TorchServeError(f"no history for {name}: package it first (torchship package {name})")

    def state(v: dict[str, Any]) -> str:
        if not h.live:
            return "?"
        return "default" if v["default"] else "registered" if v["registered"] else ""

    click.echo(f"versions of {name}, newest first" + ("" if h.live else " (server not reachable)"))
    click.echo(
        render(
            ["version", "server", "digest", "training run", "data", "metrics", "git"],
            [
                [
                    v["version"],
                    state(v),
                    v["digest"][:19],
                    v["checkpoint_run"],
                    (v["data_fingerprint"] or "")[:19],
                    " ".join(f"{k}={x}" for k, x in v["metrics"].items()),
                    (v["git_commit"] or "")[:12],
                ]
                for v in h.versions
            ],
        )
    )
    click.echo(f"\nevents of {name}, newest first")
    click.echo(
        render(
            ["time", "version", "event", "detail"],
            [
                [
                    e.time[:19].replace("T", " "),
                    e.version or "",
                    e.kind,
                    " ".join(f"{k}={v}" for k, v in e.detail.items())[:100],
                ]
                for e in h.events
            ],
        )
    )


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@json_option()
@pass_ctx
def plan(c: Ctx, file: str, as_json: bool) -> None:
    """Show what `apply FILE` would change on the server."""
    actions = c.project.plan(file)
    if as_json:
        emit([a.to_dict() for a in actions])
    elif actions:
        click.echo(
            render(["action", "model", "version", "detail"], [[a.kind, a.model, a.version, a.detail] for a in actions])
        )
    else:
        click.echo("no changes: the server matches " + file)


@click.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@public_key_option
@json_option()
@pass_ctx
def apply_cmd(c: Ctx, file: str, public_key: str | None, as_json: bool) -> None:
    """Converge the server to FILE (idempotent; a second run changes nothing)."""
    report = c.project.apply(
        file, public_key=public_key, progress=None if as_json else (lambda a: click.echo(f"  {a}"))
    )
    if as_json:
        emit(report.to_dict())
    elif not report.done and report.ok:
        click.echo("no changes: the server matches " + file)
    elif report.ok:
        click.echo(f"applied {len(report.done)} change(s) from {file}")
    if not report.ok:
        not_done = ", ".join(f"{a.kind} {a.model} {a.version}" for a in report.not_done) or "nothing else"
        raise E.TorchServeError(
            f"apply stopped at '{report.failed}': {report.error}. Done: {len(report.done)} "
            f"change(s); not done: {not_done}. The default version keeps serving."
        )


@click.command()
@name_argument()
@model_version_option("The version to roll out.", required=True)
@click.option(
    "--golden",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Golden set (JSON lines of input + expected); default tests/golden/NAME.jsonl.",
)
@click.option(
    "--min-accuracy",
    type=click.FloatRange(0, 1),
    default=None,
    help="Golden accuracy needed (default: no more than 0.02 below the current default's).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=None,
    help="Share of golden inputs on which the new version must agree with the current default.",
)
@click.option("--max-p99-ms", type=click.FloatRange(min=0), default=None, help="Latency budget under load.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option(
    "--requests",
    "load_requests",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Requests of the latency check.",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--replay",
    is_flag=True,
    help="Judge on captured production traffic instead of a golden set: VERSION must give the answers "
    "(labels, ids) production gave to the same requests (torchship capture).",
)
@click.option(
    "--window", type=click.IntRange(min=1), default=1000, show_default=True, help="With --replay: the last N."
)
@click.option(
    "--live",
    is_flag=True,
    help="Judge on live traffic through the gateway (serve start --tls) instead of a golden set.",
)
@click.option(
    "--canary",
    type=click.FloatRange(0, 100),
    default=10.0,
    show_default=True,
    help="--live: percent of NAME's traffic that VERSION answers.",
)
@click.option(
    "--shadow",
    type=click.FloatRange(0, 100),
    default=50.0,
    show_default=True,
    help="--live: percent of the rest mirrored to VERSION (its answers reach no one).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="--live: seconds of live traffic to judge on.",
)
@click.option(
    "--min-requests",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="--live: live requests VERSION must answer to be judged.",
)
@public_key_option
@json_option()
@pass_ctx
def rollout(
    c: Ctx,
    name: str,
    version: str,
    golden: str | None,
    min_accuracy: float | None,
    min_agreement: float | None,
    max_p99_ms: float | None,
    warmup: int,
    load_requests: int,
    concurrency: int,
    replay: bool,
    window: int,
    live: bool,
    canary: float,
    shadow: float,
    duration: float,
    min_requests: int,
    public_key: str | None,
    as_json: bool,
) -> None:
    """Guarded promotion of VERSION with automatic rollback (see docs/version-control.md).

    With --live, VERSION is judged on live traffic through the gateway: a canary share answered by it, a
    mirrored share compared with the default's answers; pass: it becomes the default; fail: it is removed
    and the default never changed (exit 11 either way it fails). Ctrl-C leaves the default serving 100%.
    """
    if live:
        if golden or replay or min_accuracy is not None:
            raise click.UsageError("--live judges on live traffic: drop --golden, --replay and --min-accuracy")
        report = c.project.rollout_live(
            name,
            version,
            canary=canary,
            shadow=shadow,
            duration=duration,
            min_requests=min_requests,
            min_agreement=min_agreement,
            max_p99_ms=max_p99_ms,
            public_key=public_key,
            log=None if as_json else click.echo,
        )
        _rollout_outcome(report, as_json)
        return
    gold: Path | list[Any]
    if replay:
        if golden:
            raise click.UsageError("--replay judges on captured traffic: drop --golden")
        gold = c.project.replay_golden(name, window=window)
    else:
        gold = Path(golden) if golden else c.project.golden(name)
        if not gold.is_file():
            raise click.UsageError(f"no golden set at {gold}: give --golden FILE (or --replay)")
    report = c.project.rollout(
        name,
        version,
        golden=gold,
        min_accuracy=min_accuracy,
        min_agreement=min_agreement,
        max_p99_ms=max_p99_ms,
        warmup=warmup,
        load_requests=load_requests,
        concurrency=concurrency,
        public_key=public_key,
        log=None if as_json else click.echo,
    )
    _rollout_outcome(report, as_json)


def _rollout_outcome(report: Any, as_json: bool) -> None:
    if as_json:
        emit(report.to_dict())
    if not report.passed:
        raise E.RolloutFailed(
            f"rollout of {report.name} {report.version} rejected at the {report.gate} gate: {report.reason}; "
            f"{report.previous} keeps serving"
        )


@click.command()
@name_argument()
@json_option()
@pass_ctx
def rollback(c: Ctx, name: str, as_json: bool) -> None:
    """Make the previous good version the default again."""
    old, new = c.project.rollback(name)
    say(as_json, f"{name}: default {old} -> {new}", previous=old, default=new)


@click.command("export")
@click.argument("target", type=click.Choice(["k8s", "kserve"]))
@click.option(
    "--deploy",
    "deploy_file",
    type=click.Path(dir_okay=False, exists=True),
    default="deploy.yaml",
    show_default=True,
    help="Desired-state file: which models and versions.",
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option("--name", default="torchship", show_default=True, help="Name of the Kubernetes objects.")
@click.option("--image", default=None, help="TorchServe image (default pytorch/torchserve:0.12.0-cpu).")
@click.option("--max-replicas", type=click.IntRange(min=1), default=4, show_default=True, help="k8s: HPA maximum.")
@click.option(
    "--storage-uri", default=None, help="kserve: where the model-store folder will be (default pvc://NAME-model-store)."
)
@click.option("--canary-percent", type=click.IntRange(0, 100), default=None, help="kserve: canaryTrafficPercent.")
@click.option(
    "--host",
    default=None,
    help="k8s: serve the inference API on this host name through an ingress-nginx Ingress with TLS "
    "(no Ingress without it).",
)
@click.option(
    "--tls-secret",
    default=None,
    metavar="SECRET",
    help="k8s: the Secret (type kubernetes.io/tls) with the Ingress's certificate, which the export does not "
    "write (default: the --name, then -tls).",
)
@click.option(
    "--namespace",
    default=None,
    metavar="NS",
    help="k8s: the namespace written into every manifest (--shadow needs it).",
)
@click.option(
    "--ingress-namespace",
    default=None,
    metavar="NS",
    help="k8s: the ingress-nginx controller's namespace, whose pods the NetworkPolicy admits (default ingress-nginx).",
)
@click.option(
    "--canary",
    default=None,
    metavar="MODEL:VERSION:PCT",
    help="k8s, with --host: a canary Ingress sends PCT% of MODEL's requests to a TorchServe whose default "
    "of MODEL is VERSION (header X-Torchship-Canary: always/never pins a caller).",
)
@click.option(
    "--shadow",
    default=None,
    metavar="MODEL:VERSION",
    help="k8s, with --host and --namespace: mirror every request of MODEL to that TorchServe; "
    "its answers are discarded.",
)
@public_key_option
@click.option(
    "--model-key",
    "model_key",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Model keyring that opens the encrypted archives, for the Secret the export then writes "
    "(default: the project's .torchship/keys/model-keys.json).",
)
@pass_ctx
def export_cmd(
    c: Ctx,
    target: str,
    deploy_file: str,
    out: str,
    name: str,
    image: str | None,
    max_replicas: int,
    storage_uri: str | None,
    canary_percent: int | None,
    host: str | None,
    tls_secret: str | None,
    namespace: str | None,
    ingress_namespace: str | None,
    canary: str | None,
    shadow: str | None,
    public_key: str | None,
    model_key: str | None,
) -> None:
    """Write Kubernetes or KServe manifests and the model-store layout (verified archives)."""
    written = c.project.export(
        target,
        out=out,
        desired=deploy_file,
        name=name,
        image=image,
        max_replicas=max_replicas,
        storage_uri=storage_uri,
        canary_percent=canary_percent,
        public_key=public_key,
        model_key=model_key,
        host=host,
        tls_secret=tls_secret,
        namespace=namespace,
        ingress_namespace=ingress_namespace,
        canary=canary,
        shadow=shadow,
    )
    click.echo(f"{len(written['archives'])} verified archive(s) -> {Path(out) / 'model-store' / 'model-store'}")
    secrets = written.get("secrets", [])
    for path in written["config"] + written["manifests"]:
        click.echo(f"wrote {path}" + (" (mode 0600)" if path in secrets else ""))
    for path in written.get("removed", []):
        click.echo(f"removed {path}: no longer part of the export (kubectl apply does not delete what it made)")
    if target == "k8s" and host is not None:
        click.echo(
            f"the Ingress serves https://{host}/ with the certificate of the Secret {tls_secret or name + '-tls'} "
            "(type kubernetes.io/tls), which the export does not write: cert-manager or kubectl create secret tls"
        )
    for path in written.get("ignores", []):
        click.echo(f"wrote {path} (keeps secret.yaml out of git)")
    for path in secrets:
        click.echo(
            f"{path} holds key material: the model key of the encrypted archives. Never commit it or copy it "
            "into an image (the .gitignore beside it keeps it out of git): kubectl apply it (or keep it in your "
            "secret store), then delete the file."
        )
