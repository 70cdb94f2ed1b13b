"""Cheaper variants of a model, gated on accuracy: `torchship package NAME --optimize VARIANT|auto`.

A variant is made by the handler when the worker loads the model (`optimized` in
torchship_base_handler: dynamic int8 quantization of the Linear/LSTM/GRU layers, or channels-last
convolutions), from the same signed float safetensors: verification, encryption and the weights'
layout check see the same file as for any archive. The archive's model-config says which variant
(`handler.optimize`), and the provenance records it with the gate's figures (`checkpoint.optimize`).

The gate runs that very handler function on the model and scores the variant on the training run's
held-out data (`torchship.train.held_out`: the figure training reports, such as val_accuracy or
hit-rate@10). A variant is eligible only when it stays within `TOLERANCE` (0.5 points) of the
original. Asked for by name, a variant that loses more is refused (ArchiveError; nothing is built).
With `auto`, the eligible variant with the best speed-up is chosen when it pays: forward latency
measured in-process with one torch thread (as a worker runs) at batch 1 and 8, interleaved, at least
`MIN_SPEEDUP` on their geometric mean and never more than 15% slower at either; otherwise the
original is packed and the record says why.

This module imports no training code (archiver sits below train): the held-out data comes in from
the caller, an object with `name`, `size`, `metric(model)` and `inputs(n)` (train.common.HeldOut).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torchship.handlers import HANDLER_DIR

from .errors import ArchiveError
from .spec import ArchiveSpec

__all__ = [
    "AUTO",
    "TOLERANCE",
    "MIN_SPEEDUP",
    "BATCHES",
    "Trial",
    "Decision",
    "variants",
    "applicable",
    "apply_variant",
    "latencies",
    "gate",
    "optimize_spec",
]

AUTO = "auto"
TOLERANCE = 0.005  # 0.5 points of the held-out metric (a share: 0.8755 -> 0.8705 is the most it may lose)
MIN_SPEEDUP = 1.10  # what `auto` needs (geometric mean over BATCHES) to prefer a variant to the original
MAX_SLOWDOWN = 0.85  # and no batch size slower than this ratio (about parity, given a busy machine's noise)
BATCHES = (1, 8)


class HeldOutLike(Protocol):
    """What the gate needs of held-out data (train.common.HeldOut has it)."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def metric(self) -> Callable[[Any], float]: ...

    @property
    def inputs(self) -> Callable[[int], tuple[Any, ...]]: ...


def _serving() -> Any:
    """torchship_base_handler imported as a worker imports it (flat, beside torchship_models), so
    that the gate measures the very function the worker applies."""
    if "torchship_base_handler" not in sys.modules:
        added = str(HANDLER_DIR) not in sys.path
        if added:
            sys.path.append(str(HANDLER_DIR))
        try:
            importlib.import_module("torchship_base_handler")
        finally:
            if added:
                sys.path.remove(str(HANDLER_DIR))
    return sys.modules["torchship_base_handler"]


def variants() -> tuple[str, ...]:
    """The variants a torchship handler can apply, by name."""
    return tuple(_serving().OPTIMIZE_VARIANTS)


def applicable(model: Any) -> list[str]:
    """The variants that change at least one layer of `model`."""
    kinds = _serving().OPTIMIZE_VARIANTS
    return [v for v, types in kinds.items() if any(isinstance(m, types) for m in model.modules())]


def apply_variant(model: Any, variant: str) -> Any:
    """A copy of `model` (in eval mode) as the worker serves `variant`; `model` is left as it is."""
    return _serving().optimized(copy.deepcopy(model).eval(), variant)


def latencies(
    models: dict[str, Any],
    inputs: Callable[[int], tuple[Any, ...]],
    batches: Iterable[int] = BATCHES,
    *,
    rounds: int = 15,
    burst_s: float = 0.04,
    threads: int | dict[str, int] = 1,
) -> dict[str, dict[int, float]]:
    """Median seconds per forward call of each model at each batch size, with `threads` torch threads
    (or {model name: threads}, 1 for a name not given).

    The models take turns (a short burst each, `rounds` times) so that a machine busy with something
    else slows them alike; the median of the bursts is kept. Compare the figures of one call only."""
    import torch

    before = torch.get_num_threads()
    count = threads if isinstance(threads, dict) else dict.fromkeys(models, threads)
    try:
        out: dict[str, dict[int, float]] = {name: {} for name in models}
        with torch.inference_mode():
            for batch in batches:
                args = inputs(batch)
                for name, model in models.items():  # warm up: first calls allocate, pack weights, ...
                    torch.set_num_threads(count.get(name, 1))
                    for _ in range(5):
                        model(*args)
                times: dict[str, list[float]] = {name: [] for name in models}
                for _ in range(rounds):
                    for name, model in models.items():
                        torch.set_num_threads(count.get(name, 1))
                        calls, start = 0, time.perf_counter()
                        while True:
                            model(*args)
                            calls += 1
                            elapsed = time.perf_counter() - start
                            if elapsed >= burst_s:
                                break
                        times[name].append(elapsed / calls)
                for name in models:
                    out[name][batch] = statistics.median(times[name])
        return out
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Trial:
    """One variant tried: its held-out figure, the change in points, whether the gate lets it through,
    and its speed-up over the original per batch size (original latency / variant latency)."""

    variant: str
    metric: float | None
    delta_points: float | None
    eligible: bool
    speedup: dict[int, float] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "metric": self.metric,
            "delta_points": self.delta_points,
            "eligible": self.eligible,
            "speedup": {str(b): s for b, s in sorted(self.speedup.items())},
            **({"note": self.note} if self.note else {}),
        }


@dataclass(frozen=True)
class Decision:
    """What the gate decided: `variant` (None: the original is packed), and why (`trials`, `reason`)."""

    requested: str
    variant: str | None
    metric_name: str
    held_out: int
    original: float
    trials: tuple[Trial, ...]
    reason: str
    tolerance: float = TOLERANCE

    def record(self) -> dict[str, Any]:
        """The provenance's `checkpoint.optimize`."""
        return {
            "variant": self.variant,
            "requested": self.requested,
            "metric": self.metric_name,
            "held_out": self.held_out,
            "original": round(self.original, 6),
            "tolerance_points": round(self.tolerance * 100, 3),
            "trials": [t.to_dict() for t in self.trials],
            "reason": self.reason,
        }


def _geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0


def gate(
    model: Any,
    held_out: HeldOutLike,
    requested: str = AUTO,
    *,
    tolerance: float = TOLERANCE,
    measure: bool = True,
    batches: Iterable[int] = BATCHES,
) -> Decision:
    """Try the variants (`requested` one, or every applicable one for `auto`) on `held_out`.

    ArchiveError when a variant asked for by name does not apply to the model or loses more than
    `tolerance`. With `measure`, each eligible variant's forward latency is compared with the
    original's (`latencies`); `auto` needs it to choose."""
    known = variants()
    if requested != AUTO and requested not in known:
        raise ArchiveError(f"no variant called {requested!r}: {AUTO}, {', '.join(known)}")
    model = model.eval()
    fits = applicable(model)
    if requested != AUTO and requested not in fits:
        raise ArchiveError(
            f"{requested} changes none of this model's layers ({type(model).__name__}): nothing to gain from it"
        )
    candidates = fits if requested == AUTO else [requested]
    original = float(held_out.metric(model))
    built: dict[str, Any] = {}
    scored: dict[str, tuple[float, float, bool]] = {}
    for name in candidates:
        variant = apply_variant(model, name)
        score = float(held_out.metric(variant))
        delta = round((score - original) * 100, 3)
        scored[name] = (score, delta, score >= original - tolerance - 1e-12)
        if scored[name][2]:
            built[name] = variant
    speed: dict[str, dict[int, float]] = {name: {} for name in candidates}
    if measure and built:
        times = latencies({"original": model, **built}, held_out.inputs, batches)
        for name in built:
            speed[name] = {b: round(times["original"][b] / times[name][b], 3) for b in times["original"]}
    trials = []
    for name in candidates:
        score, delta, eligible = scored[name]
        note = "" if eligible else f"loses {-delta:.2f} points: over the {tolerance * 100:g} allowed"
        trials.append(Trial(name, round(score, 6), delta, eligible, speed[name], note))
    metric = held_out.name
    if requested != AUTO:
        trial = trials[0]
        if not trial.eligible:
            raise ArchiveError(
                f"{requested} fails the accuracy gate: {metric} {original:.4f} -> {trial.metric:.4f} on "
                f"{held_out.size} held-out examples ({trial.delta_points:+.2f} points; at most "
                f"{tolerance * 100:g} may be lost); nothing was built"
            )
        chosen, reason = requested, f"asked for; {metric} {trial.delta_points:+.2f} points"
    else:
        chosen, reason = _choose(trials, measure)
    return Decision(requested, chosen, metric, held_out.size, original, tuple(trials), reason, tolerance)


def _choose(trials: list[Trial], measured: bool) -> tuple[str | None, str]:
    if not trials:
        return None, "no variant applies to this model's layers"
    eligible = [t for t in trials if t.eligible]
    if not eligible:
        return None, "every variant loses more accuracy than allowed"
    if not measured:
        return None, "speed not measured: auto chooses nothing"
    paying = [
        t
        for t in eligible
        if t.speedup and _geomean(t.speedup.values()) >= MIN_SPEEDUP and min(t.speedup.values()) >= MAX_SLOWDOWN
    ]
    if not paying:
        best = max(eligible, key=lambda t: _geomean(t.speedup.values()))
        shown = ", ".join(f"{s:.2f}x at batch {b}" for b, s in sorted(best.speedup.items()))
        return None, f"no variant pays: the best, {best.variant}, runs {shown}"
    best = max(paying, key=lambda t: _geomean(t.speedup.values()))
    return best.variant, f"fastest variant within the accuracy gate ({_geomean(best.speedup.values()):.2f}x)"


def optimize_spec(
    spec: ArchiveSpec,
    run_dir: Path,
    requested: str,
    held_out: Callable[[str, Path], HeldOutLike],
) -> tuple[ArchiveSpec, dict[str, Any], Decision]:
    """`spec` with the gated variant in its model-config (`handler.optimize`), and the run's meta.json
    with the gate's record under `optimize` (for the provenance); `held_out(kind, run_dir)` gives the
    run's held-out data. The model is built from the run's own weights, as torchship's handlers build it."""
    from safetensors.torch import load_file

    from torchship.handlers import torchship_models

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    kind = (meta.get("model") or {}).get("kind")
    if kind not in torchship_models.ARCHITECTURES or spec.weights is None:
        raise ArchiveError(
            f"--optimize builds torchship's example architectures only ({', '.join(torchship_models.ARCHITECTURES)}); "
            f"{run_dir.name}'s meta.json names {kind!r}"
        )
    model = torchship_models.build(kind, meta["model"]["architecture"])
    model.load_state_dict(load_file(str(spec.weights)))
    decision = gate(model, held_out(kind, run_dir), requested)
    handler = {**(spec.model_config.get("handler") or {})}
    handler.pop("optimize", None)
    if decision.variant is not None:
        handler["optimize"] = decision.variant
    spec = dataclasses.replace(spec, model_config={**spec.model_config, "handler": handler})
    return spec, {**meta, "optimize": decision.record()}, decision
