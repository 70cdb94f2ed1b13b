"""Guarded rollout with automatic rollback, and one-call rollback.

A rollout puts version V beside the current default and judges it before any user traffic
reaches it (requests to /predictions/NAME keep going to the default the whole time):

1. verify and register V with the default's workers and batching; wait until ready;
2. warm up;
3. golden gate: V's accuracy on a golden set (inputs with expected answers);
4. shadow gate: how often V agrees with the current default on the same inputs;
5. latency gate: V's p99 under a short concurrent load;
6. pass: V becomes the default, the previous default stays registered (scaled down to one
   worker) for an instant rollback; fail: V is unregistered, the default never changed, and the
   report names the gate and its figures.

Every step is recorded in the registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchship.ops.takedown import take_down
from torchship.perf.load import run_load
from torchship.sdk.errors import ModelNotFound, TorchServeError

if TYPE_CHECKING:
    from torchship.ops.registry import Registry
    from torchship.sdk.client import TorchServe

__all__ = ["GoldenItem", "load_golden", "RolloutReport", "rollout", "rollback", "evaluate"]


@dataclass(frozen=True)
class GoldenItem:
    """One row of a golden set: a request body and the answer fields it must produce."""

    input: Any
    expected: dict[str, Any]


def load_golden(path: str | Path) -> list[GoldenItem]:
    """A golden set: JSON lines of {"input": <request body>, "expected": {<field>: <value>, ...}}."""
    path = Path(path)
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TorchServeError(f"cannot read golden set {path}: {exc.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append(GoldenItem(row["input"], dict(row["expected"])))
        except (ValueError, KeyError, TypeError):
            raise TorchServeError(f'{path}:{n}: expected {{"input": ..., "expected": {{...}}}}') from None
    if not items:
        raise TorchServeError(f"golden set {path} is empty")
    return items


def _agrees(answer: Any, expected: dict[str, Any]) -> bool:
    """Every expected field equals the answer's; {"contains": x} asks for a list holding x."""
    if not isinstance(answer, dict):
        return False
    for key, want in expected.items():
        got = answer.get(key)
        if isinstance(want, dict) and set(want) == {"contains"}:
            if not isinstance(got, list) or want["contains"] not in got:
                return False
        elif got != want:
            return False
    return True


def evaluate(
    client: TorchServe, name: str, version: str, golden: list[GoldenItem], concurrency: int = 4
) -> tuple[float, list[Any]]:
    """Accuracy of `version` on the golden set, and its answers (errors count as wrong)."""
    answers = client.predict_many(name, [g.input for g in golden], version=version, concurrency=concurrency)
    right = sum(1 for a, g in zip(answers, golden) if _agrees(a, g.expected))
    return right / len(golden), answers


@dataclass
class RolloutReport:
    """The outcome of a rollout: passed or not, the gate that failed and why, and the figures measured."""

    name: str
    version: str
    previous: str | None
    passed: bool = False
    gate: str | None = None  # the gate that failed
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (for --json)."""
        return dict(self.__dict__)


def rollout(
    client: TorchServe,
    store: Path,
    name: str,
    version: str,
    *,
    golden: list[GoldenItem],
    min_accuracy: float | None = None,
    min_agreement: float | None = None,
    max_p99_ms: float | None = None,
    warmup: int = 20,
    load_requests: int = 200,
    concurrency: int = 4,
    public_key: Path | None = None,
    model_keys: Path | None = None,
    registry: Registry | None = None,
    timeout: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> RolloutReport:
    """Run a guarded rollout of `version` (see the module docstring).

    Never raises for a failed gate: the report says what happened. Unset thresholds: accuracy must not fall
    more than 0.02 below the current default's; agreement and p99 are measured and reported only.
    """
    from torchship.archiver.names import check_name, check_version

    check_name(name)  # before any request is sent or anything is recorded
    check_version(version)  # a rollout always names its version
    say = log or (lambda msg: None)
    try:
        current = client.describe(name)[0]
    except ModelNotFound:
        current = None
    if current is not None and current.version == version:
        raise TorchServeError(f"{name} {version} is already the default: nothing to roll out")
    report = RolloutReport(name, version, current.version if current else None)
    record = (lambda kind, **d: registry.record(name, version, kind, **d)) if registry else (lambda *a, **k: None)
    record("rollout_started", previous=report.previous)

    registered_here = False
    try:
        say(f"registering {name} {version} beside {report.previous or 'nothing'} ...")
        registered_here = register_beside(client, store, name, version, current, public_key, model_keys, timeout)
        if registered_here:
            record("registered", via="rollout")

        say(f"warming up with {warmup} requests ...")
        inputs = [g.input for g in golden]
        if warmup:
            run_load(client, name, inputs, version=version, concurrency=concurrency, requests=warmup)

        accuracy, answers = evaluate(client, name, version, golden, concurrency)
        report.figures["accuracy"] = round(accuracy, 4)
        if current is not None:
            base_accuracy, base_answers = evaluate(client, name, current.version, golden, concurrency)
            report.figures["previous_accuracy"] = round(base_accuracy, 4)
            keys = list(golden[0].expected)
            agree = sum(
                1
                for a, b in zip(answers, base_answers)
                if isinstance(a, dict) and isinstance(b, dict) and all(a.get(k) == b.get(k) for k in keys)
            )
            report.figures["agreement"] = round(agree / len(golden), 4)
        say(
            f"golden accuracy {report.figures['accuracy']}"
            + (
                f" (default {report.figures['previous_accuracy']}), agreement {report.figures['agreement']}"
                if current is not None
                else ""
            )
        )

        load = run_load(client, name, inputs, version=version, concurrency=concurrency, requests=load_requests)
        report.figures["p50_ms"] = round(load.p(50), 2)
        report.figures["p99_ms"] = round(load.p(99), 2)
        report.figures["load_failed"] = load.failed
        say(
            f"latency p50 {report.figures['p50_ms']} ms, p99 {report.figures['p99_ms']} ms "
            f"({load.sent} requests at concurrency {concurrency})"
        )

        gate_accuracy = min_accuracy
        if gate_accuracy is None and "previous_accuracy" in report.figures:
            gate_accuracy = report.figures["previous_accuracy"] - 0.02
        gates = [
            (
                "golden",
                gate_accuracy is not None and accuracy < gate_accuracy,
                f"accuracy {accuracy:.4f} < {gate_accuracy if gate_accuracy is None else round(gate_accuracy, 4)}",
            ),
            (
                "shadow",
                min_agreement is not None and report.figures.get("agreement", 1.0) < min_agreement,
                f"agreement {report.figures.get('agreement')} < {min_agreement}",
            ),
            (
                "latency",
                max_p99_ms is not None and load.p(99) > max_p99_ms,
                f"p99 {report.figures['p99_ms']} ms > {max_p99_ms} ms",
            ),
            ("errors", load.failed > 0, f"{load.failed} of {load.sent} requests failed under load"),
        ]
        failed = next(((g, why) for g, bad, why in gates if bad), None)
        report.figures["thresholds"] = {
            "min_accuracy": gate_accuracy,
            "min_agreement": min_agreement,
            "max_p99_ms": max_p99_ms,
        }
        if failed:
            report.gate, report.reason = failed
            raise _GateFailed()

        client.set_default(name, version)
        settle_promoted(client, report, current, record, say)
        return report
    except (_GateFailed, TorchServeError, ValueError) as exc:
        if not isinstance(exc, _GateFailed):
            report.gate, report.reason = report.gate or "deploy", str(exc)
        if registered_here:
            try:
                take_down(client, name, version)
                record("unregistered", via="rollout", reason=report.gate)
            except TorchServeError:
                pass
        record("rollout_failed", gate=report.gate, reason=report.reason, **_flat(report.figures))
        say(
            f"rollout of {name} {version} FAILED at the {report.gate} gate: {report.reason}; "
            f"{report.previous} keeps serving"
        )
        return report


def settle_promoted(
    client: TorchServe, report: RolloutReport, current: Any, record: Callable[..., Any], say: Callable[[str], None]
) -> None:
    """Finish a promotion once the candidate is the default.

    The report passes, the previous default stays registered on one worker for an instant rollback, and
    the registry and the log say so."""
    report.passed = True
    if current is not None and (current.min_workers > 1 or current.max_workers > 1):
        client.scale(report.name, version=current.version, min_workers=1, max_workers=1)
    record("promoted", previous=report.previous, **_flat(report.figures))
    record("rollout_passed", **_flat(report.figures))
    say(f"{report.name} {report.version} is the default; {report.previous} stays registered for rollback")


def register_beside(
    client: TorchServe,
    store: Path,
    name: str,
    version: str,
    current: Any,
    public_key: Path | None,
    model_keys: Path | None,
    timeout: float,
) -> bool:
    """Verify and register `version` with the `current` default's workers and batching.

    True if it was registered here (False: it was registered already)."""
    from torchship.ops.deploy import deploy

    result = deploy(
        client,
        store,
        name,
        version,
        public_key=public_key,
        model_keys=model_keys,
        timeout=timeout,
        workers=max(current.min_workers, 1) if current else 1,
        batch_size=current.batch_size if current else None,
        max_batch_delay=current.max_batch_delay if current else None,
    )
    return result.action == "registered"


class _GateFailed(Exception):
    pass


def _flat(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k != "thresholds"}


def rollback(client: TorchServe, name: str, registry: Registry) -> tuple[str, str]:
    """Make the previous good version the default again; returns (from, to)."""
    from torchship.archiver.names import check_name

    check_name(name)
    current = client.describe(name)[0]
    live = {d.version: d for d in client.versions(name)}
    target = registry.previous_default(name, current.version)
    if target is None or target not in live:
        raise TorchServeError(
            f"no previous good version of {name} is registered to roll back to (history: torchship history {name})"
        )
    if live[target].ready_workers < max(current.min_workers, 1):
        client.scale(
            name, version=target, min_workers=max(current.min_workers, 1), max_workers=max(current.max_workers, 1)
        )
        client.wait_until_ready(name, target)
    client.set_default(name, target)
    registry.record(name, target, "rolled_back", **{"from": current.version})
    return current.version, target
