"""`torchship bench | tune | autoscale`: how fast, the fastest settings, and workers that follow load."""

from __future__ import annotations

import time

import click
import yaml

from torchship.perf.curve import curve_table, parse_profile

from .base import (
    Ctx,
    check_range,
    emit,
    engine_option,
    json_option,
    load_bodies,
    model_version_option,
    name_argument,
    pass_ctx,
    payload_options,
    public_key_option,
)
from .table import render


@click.command("bench")
@name_argument()
@model_version_option()
@payload_options()
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds.")
@click.option(
    "--requests",
    "n_requests",
    type=click.IntRange(min=1),
    default=None,
    help="Send this many requests instead of running for --duration.",
)
@click.option("--stream", is_flag=True, help="Streaming model: report time to first token and tokens/s.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG: latency over time and its histogram (python engine).",
)
@engine_option("Load generator: wrk (C, when installed) or Python threads; auto picks wrk for plain tests.")
@click.option(
    "--replay",
    is_flag=True,
    help="Send the requests captured from production (torchship capture) instead of --data/--payload.",
)
@click.option(
    "--window", type=click.IntRange(min=1), default=1000, show_default=True, help="With --replay: the last N."
)
@json_option()
@pass_ctx
def bench_cmd(
    c: Ctx,
    name: str,
    version: str | None,
    json_data: str | None,
    payload: str | None,
    concurrency: int,
    duration: float,
    n_requests: int | None,
    stream: bool,
    plot: str | None,
    engine: str,
    replay: bool,
    window: int,
    as_json: bool,
) -> None:
    """Load-test a model: throughput, latency percentiles, errors by status (TTFT when streaming)."""
    if replay and (json_data or payload):
        raise click.UsageError("--replay sends the captured requests: drop --data/--payload")
    result = c.project.bench(
        name,
        c.project.replay_bodies(name, version=version, window=window) if replay else load_bodies(json_data, payload),
        version=version,
        concurrency=concurrency,
        duration=duration,
        requests=n_requests,
        engine=engine,
        stream=stream,
        plot=plot,
    )
    if as_json:
        emit(result)
    else:
        click.echo(render(["figure", "value"], [[k, v] for k, v in result.items() if k not in ("first_errors",)]))


@click.command()
@name_argument()
@click.option("--slo-p99-ms", type=click.FloatRange(min=0.1), required=True, help="The p99 latency budget.")
@model_version_option("Archive version (default: the newest).")
@payload_options(" (default: the inputs of tests/golden/NAME.jsonl)")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="The load to tune for.")
@click.option(
    "--profile",
    "profile_text",
    default=None,
    metavar="C:SHARE,...",
    help="Tune for a mix of loads instead: concurrency:share of the time, e.g. 1:0.7,16:0.3.",
)
@click.option(
    "--seconds", type=click.FloatRange(min=0.5), default=5.0, show_default=True, help="Per trial and per load."
)
@click.option("--max-workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--cores",
    type=click.IntRange(min=1),
    default=None,
    help="Cores the server may use, for the threads step (default: this machine's).",
)
@engine_option("Load generator of each trial: wrk (with --data) when installed, else Python threads.")
@click.option(
    "--write",
    "write_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the winner into this desired-state file (e.g. deploy.yaml).",
)
@click.option(
    "--curve/--no-curve",
    default=True,
    show_default=True,
    help="Then measure the winner and a plain deploy's settings at 1, 4, 16 and 64 callers.",
)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the two curves as a PNG.")
@public_key_option
@json_option()
@pass_ctx
def tune(
    c: Ctx,
    name: str,
    slo_p99_ms: float,
    version: str | None,
    json_data: str | None,
    payload: str | None,
    concurrency: int,
    profile_text: str | None,
    seconds: float,
    max_workers: int,
    cores: int | None,
    engine: str,
    write_file: str | None,
    curve: bool,
    plot: str | None,
    public_key: str | None,
    as_json: bool,
) -> None:
    """Search batching, workers and threads for the highest throughput whose p99 meets the budget, at a load."""
    profile = parse_profile(profile_text) if profile_text else None
    if plot and not curve:
        raise click.UsageError("--plot draws the curves: drop --no-curve")
    bodies = load_bodies(json_data, payload) if (json_data or payload) else None
    if bodies is None and not c.project.golden(name).is_file():
        raise click.UsageError(
            f"no requests to tune with: give --data or --payload ({c.project.golden(name)} is missing)"
        )
    result = c.project.tune(
        name,
        bodies,
        slo_p99_ms=slo_p99_ms,
        version=version,
        concurrency=concurrency,
        profile=profile,
        seconds=seconds,
        max_workers=max_workers,
        cores=cores,
        engine=engine,
        write=write_file,
        public_key=public_key,
        curve=curve,
        plot=plot,
        log=None if as_json else click.echo,
    )
    if as_json:
        emit(result.to_dict())
        return
    best = result.best
    click.echo()
    click.echo(
        render(
            ["workers", "threads", "batch", "delay ms", "req/s", "p50 ms", "p99 ms", "runs", "meets SLO"],
            [
                [
                    t.workers,
                    t.threads,
                    t.batch_size,
                    t.max_batch_delay,
                    t.throughput,
                    t.p50_ms,
                    t.p99_ms,
                    t.runs,
                    "yes" if t.meets(slo_p99_ms) else "no",
                ]
                for t in result.trials
            ],
        )
    )
    verdict = "fastest within" if result.meets_slo else "NOTHING met; lowest p99 for"
    load = ", ".join(f"{c} callers {share:g}" for c, share in result.profile.items()) if profile else None
    click.echo(
        f"\n{verdict} p99 {slo_p99_ms:g} ms" + (f" over the load profile ({load})" if load else "") + ": "
        f"workers {best.workers}, threads {best.threads}, "
        f"batch {best.batch_size}, delay {best.max_batch_delay} ms -> {best.throughput} req/s, "
        f"p99 {best.p99_ms} ms"
    )
    if result.curves:
        click.echo()
        click.echo(render(*curve_table(result.curves)))
        if result.plot:
            click.echo(f"plot: {result.plot}")
    click.echo(
        ("written into " + write_file)
        if write_file
        else yaml.safe_dump({"models": {name: result.settings}}, sort_keys=False)
    )
    if result.repackage:
        click.echo(
            f"threads per worker are part of the archive: `{result.repackage}` builds a version with "
            f"{best.threads}, then deploy that version with these settings"
        )


@click.command()
@name_argument()
@model_version_option()
@click.option("--min", "min_workers", required=True, type=click.IntRange(min=1))
@click.option("--max", "max_workers", required=True, type=click.IntRange(min=1))
@click.option(
    "--target-queue-ms",
    type=click.FloatRange(min=0.1),
    default=50.0,
    show_default=True,
    help="Scale up when requests wait longer than this in the queue.",
)
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Seconds per tick.")
@click.option("--up-cooldown", type=click.FloatRange(min=0), default=3.0, show_default=True)
@click.option("--down-cooldown", type=click.FloatRange(min=0), default=15.0, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0.1), default=None, help="Stop after this many seconds.")
@pass_ctx
def autoscale(
    c: Ctx,
    name: str,
    version: str | None,
    min_workers: int,
    max_workers: int,
    target_queue_ms: float,
    interval: float,
    up_cooldown: float,
    down_cooldown: float,
    duration: float | None,
) -> None:
    """Scale a model's workers within [min, max] from its queue time; Ctrl-C to stop."""
    check_range(min_workers, max_workers)

    def log(line: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {name}: {line}")

    log(f"autoscaling within [{min_workers}, {max_workers}], target queue {target_queue_ms:g} ms")
    c.project.autoscale(
        name,
        min_workers=min_workers,
        max_workers=max_workers,
        version=version,
        target_queue_ms=target_queue_ms,
        interval=interval,
        up_cooldown=up_cooldown,
        down_cooldown=down_cooldown,
        duration=duration,
        handle_signals=True,
        log=log,
    )
