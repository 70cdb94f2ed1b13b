"""The serving defaults against the alternatives, at every load: 1, 4, 16 and 64 callers, one run.

    .venv/bin/python benchmarks/bench_defaults.py [--models mlp] [--seconds 3] [--rounds 2]

Every setting below is registered at once on one TorchServe (started here with torchship's config,
its own ports and folder) under a name of its own, and wrk loads each in turn at each concurrency;
the rounds interleave the settings, so that a noisy stretch of a shared machine slows all of them,
and each figure is the median over the rounds. Then the targets of the defaults, from the same run:

- at 1 caller, the default's p50 within 1.5x of the same model registered with batch 1;
- at 16 callers, the default's throughput within 10% of the best setting measured.

Why no static setting of TorchServe 0.12 meets both for a model this small: its frontend
(`Model.pollBatch`) waits up to the batch delay for a batch's second request whenever its queue is
empty, so any delay of 1 ms or more costs a lone caller about that much more; and with a 0 ms delay
it takes at most one request beyond the first into a batch, so batches stay at 2. Results:
benchmarks/results/defaults.json and defaults.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torchship import LocalServer, archiver  # noqa: E402
from torchship.archiver.examples import EXAMPLES  # noqa: E402
from torchship.ops.server import free_port_overrides  # noqa: E402
from torchship.ops.takedown import unregister_after_load  # noqa: E402
from torchship.perf import wrk  # noqa: E402
from torchship.perf.curve import LEVELS, Point, load_point, plot_curves  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

# label -> (workers, batch size, batch delay ms)
BATCH_1 = "batch 1"
OLD_DEFAULT = "old default"
CANDIDATES = {
    BATCH_1: (1, 1, 0),
    OLD_DEFAULT: (1, 8, 10),
    "b8 d0": (1, 8, 0),
    "b8 d1": (1, 8, 1),
    "b16 d1": (1, 16, 1),
    "b16 d5": (1, 16, 5),
    "2w b8 d0": (2, 8, 0),
    "2w b8 d1": (2, 8, 1),
    "2w b8 d2": (2, 8, 2),
}


def payload(model: str) -> object:
    """A real held-out input of the model, as the client sends it (fashion: a PNG's bytes)."""
    if model == "mlp":
        from torchship.train.mlp import make_data

        x, _ = make_data(0, 10000)
        return {"data": [round(v, 6) for v in x[-1].tolist()]}
    import subprocess

    if model == "fashion":  # an image: the PNG bytes a client sends
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "request.png"
            subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "demo_request.py"), model, "--png", str(png)],
                capture_output=True,
                check=True,
            )
            return png.read_bytes()
    body = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_request.py"), model], capture_output=True, check=True
    ).stdout
    return json.loads(body)


def run_dir(model: str, work: Path) -> Path:
    """The model's training run: mlp trains in seconds; the others use the latest run under checkpoints/."""
    from torchship.train.common import latest_run

    if model == "mlp":
        from torchship.train import mlp

        return mlp.train(work / "checkpoints", quick=True, progress=False).run_dir
    run = latest_run(ROOT / "checkpoints" / model)
    if run is None:
        raise SystemExit(f"no training run of {model} under checkpoints/: run `make train` first")
    return run


def packaged(model: str, work: Path) -> tuple[Path, Path]:
    """The example `model` packaged as version 1.0 into `work`/store, signed with keys made in `work`/keys:
    (the store, the archive)."""
    store, keys = work / "store", work / "keys"
    store.mkdir()
    archiver.ensure_keys(keys)
    return store, archiver.package(archiver.example_spec(model, run_dir(model, work), "1.0"), store, keys).path


def median_point(points: list[Point]) -> Point:
    return Point(
        points[0].concurrency,
        round(statistics.median(p.throughput for p in points), 1),
        round(statistics.median(p.p50_ms for p in points), 2),
        round(statistics.median(p.p99_ms for p in points), 2),
        sum(p.failed for p in points),
    )


def bench_model(model: str, settings: dict[str, tuple[int, int, int]], seconds: float, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-defaults-") as tmp:
        work = Path(tmp)
        store, archive = packaged(model, work)
        server = LocalServer(
            ROOT / "config.properties", work / "server", model_store=store, overrides=free_port_overrides()
        )
        server.start(timeout=120)
        try:
            with server.client() as client:
                names = {}
                for i, (label, (workers, batch, delay)) in enumerate(settings.items()):
                    names[label] = f"d{i}-{model}"
                    client.register(
                        archive.name,
                        model_name=names[label],
                        initial_workers=workers,
                        batch_size=batch,
                        max_batch_delay=delay,
                    )
                    client.wait_until_ready(names[label], timeout=120)
                body = [payload(model)]
                for name in names.values():  # warm-up
                    load_point(client, name, body, concurrency=16, seconds=1, engine="wrk")
                runs: dict[str, dict[int, list[Point]]] = {label: {c: [] for c in LEVELS} for label in settings}
                for r in range(rounds):
                    for c in LEVELS:
                        for label, name in names.items():
                            p = load_point(client, name, body, concurrency=c, seconds=seconds, engine="wrk")
                            runs[label][c].append(p)
                            print(
                                f"{model} round {r + 1}/{rounds}  {label:<12} c{c:<3} {p.throughput:8.1f} req/s  "
                                f"p50 {p.p50_ms:6.2f}  p99 {p.p99_ms:7.2f}"
                                + (f"  {p.failed} failed" if p.failed else ""),
                                flush=True,
                            )
                for name in names.values():
                    unregister_after_load(client, name)
        finally:
            server.stop()
    return {label: [median_point(runs[label][c]) for c in LEVELS] for label in settings}


def verdict(curves: dict[str, list[Point]], default: str) -> list[str]:
    at = {label: {p.concurrency: p for p in points} for label, points in curves.items()}
    c1 = at[default][1].p50_ms / at[BATCH_1][1].p50_ms
    best_label = max(curves, key=lambda label: at[label][16].throughput)
    c16 = at[default][16].throughput / at[best_label][16].throughput
    return [
        f"1 caller: {default} p50 {at[default][1].p50_ms} ms = {c1:.2f}x batch 1's {at[BATCH_1][1].p50_ms} ms "
        f"(target <= 1.5x: {'met' if c1 <= 1.5 else 'NOT met'})",
        f"16 callers: {default} {at[default][16].throughput:.0f} req/s = {c16:.2f}x the best, {best_label} "
        f"{at[best_label][16].throughput:.0f} req/s (target >= 0.90x: {'met' if c16 >= 0.9 else 'NOT met'})",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed: run `make os` (or scripts/setup-os.sh wrk)")
    results = {}
    for model in args.models.split(","):
        serving = EXAMPLES[model].serving
        default = f"default (b{serving['batch_size']} d{serving['max_batch_delay']})"
        chosen = (serving["workers"], serving["batch_size"], serving["max_batch_delay"])
        settings = {label: s for label, s in CANDIDATES.items() if s != chosen}
        settings[default] = chosen
        curves = bench_model(model, settings, args.seconds, args.rounds)
        print(f"\n{model}: median of {args.rounds} rounds, {args.seconds:g} s per load (req/s, p50 ms, p99 ms)")
        at = {label: {p.concurrency: p for p in points} for label, points in curves.items()}
        print(f"{'setting':<22}" + "".join(f"{'c' + str(c):>24}" for c in LEVELS))
        for label in curves:
            print(
                f"{label:<22}"
                + "".join(
                    f"{at[label][c].throughput:>9.0f} {at[label][c].p50_ms:>6.2f} {at[label][c].p99_ms:>7.2f}"
                    for c in LEVELS
                )
            )
        lines = verdict(curves, default)
        print("\n".join(lines))
        results[model] = {
            "settings": {
                label: dict(zip(("workers", "batch_size", "max_batch_delay"), s)) for label, s in settings.items()
            },
            "curves": {label: [p.to_dict() for p in points] for label, points in curves.items()},
            "verdict": lines,
        }
        plot_curves(
            {
                label: curves[label]
                for label in (BATCH_1, OLD_DEFAULT, default, max(curves, key=lambda k: at[k][16].throughput))
            },
            RESULTS / f"defaults_{model}.png",
            f"{model}: serving settings at every load",
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "defaults.json").write_text(
        json.dumps({"seconds": args.seconds, "rounds": args.rounds, "models": results}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
