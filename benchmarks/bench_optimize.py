"""Cheaper variants of each example model, side by side in one run (`torchship package --optimize`).

    .venv/bin/python benchmarks/bench_optimize.py [--models mlp,sentiment,fashion,recommender,embedder]
        [--no-compile] [--rounds 15] [--json FILE]

Per model (its newest checkpoint in checkpoints/): the original and each variant a torchship handler
can make at load (archiver/optimize.py: int8-dynamic, channels-last; each applied by the handler's
own `optimized`), plus two that are not offered, measured to say why: `torch.compile` (inductor,
default mode) and the original with all cores' torch threads (a worker uses one). For each: the
held-out figure training reports (`torchship.train.held_out`) and its change in points, whether the
accuracy gate (0.5 points) lets it through, and the forward latency in-process with one torch
thread (as a worker runs) at batch 1 and batch 8, with throughput and ratios to the original.
The variants of a model take turns in short bursts and the median burst is kept, so a machine busy
with something else slows them alike: compare ratios, within one run. Last, what `--optimize auto`
would choose for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from torchship.archiver import optimize  # noqa: E402
from torchship.handlers import torchship_models  # noqa: E402
from torchship.train import held_out  # noqa: E402
from torchship.train.common import latest_run  # noqa: E402

MODELS = ("mlp", "sentiment", "fashion", "recommender", "embedder")


def load(name: str, checkpoints: Path) -> tuple[torch.nn.Module, Path]:
    run = latest_run(checkpoints, name)
    if run is None:
        raise SystemExit(f"no checkpoint of {name} in {checkpoints}: run `torchship train {name} --quick` first")
    meta = json.loads((run / "meta.json").read_text())
    model = torchship_models.build(meta["model"]["kind"], meta["model"]["architecture"])
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    return model.eval(), run


def bench_model(name: str, checkpoints: Path, compile_: bool, rounds: int) -> dict:
    model, run = load(name, checkpoints)
    data = held_out(name, run)
    rows: dict[str, dict] = {}
    started = time.perf_counter()
    original = data.metric(model)
    rows["original"] = {"metric": original, "offered": True}
    models: dict[str, torch.nn.Module] = {"original": model}
    for variant in optimize.applicable(model):
        v = optimize.apply_variant(model, variant)
        rows[variant] = {"metric": data.metric(v), "offered": True}
        models[variant] = v
    if compile_:
        compiled = torch.compile(model)
        t = time.perf_counter()
        with torch.inference_mode():
            compiled(*data.inputs(1))  # the first call compiles: what a worker would wait at start-up
        first = time.perf_counter() - t
        rows["torch.compile"] = {"metric": data.metric(compiled), "offered": False, "first_call_s": round(first, 1)}
        models["torch.compile"] = compiled
    accuracy_s = time.perf_counter() - started
    cores = os.cpu_count() or 1
    threads = {}
    if cores > 1:  # more threads for one worker: the original at all cores, in the same turns
        models[f"{cores} threads"] = model
        threads[f"{cores} threads"] = cores
        rows[f"{cores} threads"] = {"metric": original, "offered": False}
    times = optimize.latencies(models, data.inputs, optimize.BATCHES, rounds=rounds, threads=threads)
    for key, row in rows.items():
        row["delta_points"] = round((row["metric"] - original) * 100, 2)
        row["eligible"] = row["metric"] >= original - optimize.TOLERANCE - 1e-12
        row["latency_us"] = {b: times[key][b] * 1e6 for b in optimize.BATCHES}
        row["ratio"] = {b: times["original"][b] / times[key][b] for b in optimize.BATCHES}
        row["items_per_s"] = {b: b / times[key][b] for b in optimize.BATCHES}
    trials = [
        optimize.Trial(k, r["metric"], r["delta_points"], r["eligible"], {b: r["ratio"][b] for b in optimize.BATCHES})
        for k, r in rows.items()
        if r["offered"] and k != "original"
    ]
    choice, reason = optimize._choose(trials, True)
    return {
        "model": name,
        "run": run.name,
        "metric": data.name,
        "held_out": data.size,
        "rows": rows,
        "auto": choice,
        "reason": reason,
        "accuracy_seconds": round(accuracy_s, 1),
    }


def table(results: list[dict]) -> str:
    head = (
        "| model | variant | held-out metric | points | gate | b1 µs | b1 ratio | b8 µs | b8 items/s | b8 ratio |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for res in results:
        for key, r in res["rows"].items():
            gate = "-" if key == "original" else ("pass" if r["eligible"] else "FAIL")
            if not r["offered"]:
                gate += " (not offered)"
            label = key + (f" (1st call {r['first_call_s']} s)" if "first_call_s" in r else "")
            lines.append(
                f"| {res['model'] if key == 'original' else ''} | {label} | {res['metric']} {r['metric']:.4f} | "
                f"{r['delta_points']:+.2f} | {gate} | {r['latency_us'][1]:.0f} | {r['ratio'][1]:.2f}x | "
                f"{r['latency_us'][8]:.0f} | {r['items_per_s'][8]:.0f} | {r['ratio'][8]:.2f}x |"
            )
    picks = "\n".join(
        f"- {r['model']} ({r['held_out']} held-out examples): auto -> {r['auto'] or 'original'}: {r['reason']}"
        for r in results
    )
    return lines[0] + "\n" + "\n".join(lines[1:]) + "\n\n" + picks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--rounds", type=int, default=15, help="turns each variant gets per batch size")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # torch.ao.quantization's deprecation notices, once per layer
    results = []
    for name in args.models.split(","):
        t = time.perf_counter()
        results.append(bench_model(name, args.checkpoints, args.compile, args.rounds))
        print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, latency with 1 torch thread "
        f"(but the 'N threads' rows), median of {args.rounds} interleaved bursts\n"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
