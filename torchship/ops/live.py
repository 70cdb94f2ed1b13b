"""Live rollouts: a candidate version judged on the live traffic that passes through the gateway.

`torchship rollout NAME --version V --live [--canary PCT] [--shadow PCT] [--duration S] [--min-requests N]`:

1. V is verified and registered beside the default, with the default's workers and batching, and both
   versions capture every request they answer (the settings they had come back at the end);
2. the gateway splits /predictions/NAME (no version named): PCT% of it is answered by V (a 5xx of V is
   answered by the default instead: no caller sees V fail), and SHADOW% of the rest is also sent to V,
   whose answer nobody gets (torchship.gateway.nginx.Split). Every request carries the gateway's
   request id, which the capture records as `gateway_id` for both versions;
3. after `duration` seconds V is judged on what it did, from the gateway's access log (which arm
   each request took, V's own status before any fallback, TorchServe's time per answer) and from the
   capture (V's shadow answers against the default's answers to the same requests):

   - traffic: V answered at least `min_requests` requests (canary and shadow together);
   - errors: V's share of 5xx (or no answer) is at most the default's share plus one point;
   - latency: V's p99 is within `max_p99_ms` when given, else at most 1.5x the default's p99 + 5 ms;
   - agreement: V's shadow answers agree with the default's on their decisive fields (labels, ids:
     torchship.ops.capture) on at least `min_agreement` of the pairs (default 0.8), when there were
     shadow requests;

4. pass: V becomes the default and the split ends (the old default stays registered, scaled to one
   worker, for `torchship rollback`); fail: the split ends first, then V is unregistered; the default
   never changed. Ctrl-C at any point: the split ends and V is unregistered, the default serving 100%.

Every step is recorded in the registry.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchship.ops.rollout import RolloutReport, _flat, register_beside, settle_promoted
from torchship.sdk.errors import ModelNotFound, TorchServeError

if TYPE_CHECKING:
    from torchship.gateway import Gateway
    from torchship.ops.registry import Registry
    from torchship.sdk.client import TorchServe

__all__ = ["ArmFigures", "live_figures", "shadow_agreement", "live_rollout"]

DEFAULT_MIN_AGREEMENT = 0.8
ERROR_MARGIN = 0.01  # V may fail at most one point more often than the default
P99_FACTOR, P99_SLACK_MS = 1.5, 5.0


@dataclass
class ArmFigures:
    """What one side of a live rollout did: requests, failures (5xx or no answer), and TorchServe's times."""

    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float:
        """The share of requests that failed (0 with none)."""
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as plain data."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def _first(text: Any) -> str:
    """The first of nginx's upstream values ("500 : 200", "0.004, 0.003"): the first try's."""
    return str(text or "").replace(",", " ").replace(":", " ").split(" ")[0].strip()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)], 2)


def _arm(entries: list[tuple[int, float | None]]) -> ArmFigures:
    times = [t for _, t in entries if t is not None]
    return ArmFigures(
        requests=len(entries),
        errors=sum(1 for status, _ in entries if status >= 500 or status == 0),
        p50_ms=_percentile(times, 50),
        p99_ms=_percentile(times, 99),
    )


def read_access(paths: list[Path], model: str, since: float) -> list[dict[str, Any]]:
    """The gateway's access-log entries of `model`'s live rollout, logged at or after `since` (Unix seconds)."""
    import datetime as dt

    out = []
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
                when = dt.datetime.fromisoformat(str(entry["time"])).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            if entry.get("live") == model and when >= math.floor(since):
                out.append(entry)
    return out


def live_figures(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The default's and the candidate's figures from a live rollout's access-log entries.

    The default answered every main request that was not the candidate's share; the candidate answered
    its share (its own status is the first upstream status: a fallback to the default follows it) and
    the mirrored requests. `client_errors` counts the 5xx that callers got."""
    from torchship.gateway.nginx import SHADOW_PATH

    default: list[tuple[int, float | None]] = []
    candidate: list[tuple[int, float | None]] = []
    canary = shadow = client_errors = 0
    for e in entries:
        try:
            status = int(e.get("status") or 0)
        except (TypeError, ValueError):
            continue
        first_status = _first(e.get("upstream_status"))
        first_time = _first(e.get("upstream_time"))
        ms = float(first_time) * 1000 if first_time.replace(".", "", 1).isdigit() else None
        own = int(first_status) if first_status.isdigit() else 0
        if not first_status and status < 500:
            continue  # refused by the gateway itself (no key, over the rate, too large): no version answered
        if e.get("path") == SHADOW_PATH:
            if e.get("arm") == "shadow":
                shadow += 1
                candidate.append((own, ms))
            continue
        client_errors += status >= 500
        if e.get("arm") == "canary":
            canary += 1
            candidate.append((own, ms))
        else:
            default.append((own or status, ms))
    return {
        "default": _arm(default),
        "candidate": _arm(candidate),
        "canary_requests": canary,
        "shadow_requests": shadow,
        "client_errors": client_errors,
    }


def shadow_agreement(default_records: list[dict[str, Any]], candidate_records: list[dict[str, Any]]) -> tuple[int, int]:
    """Return (pairs, agreeing pairs) of the candidate's shadow answers and the default's.

    The candidate's answered captured requests are matched by gateway id with the default's answers to the
    same requests, and compared on their decisive fields."""
    from torchship.ops.capture import _decisive

    answers = {
        r["gateway_id"]: r.get("answer") for r in default_records if r.get("gateway_id") and r.get("status") == 200
    }
    pairs = agreed = 0
    for r in candidate_records:
        gid = r.get("gateway_id")
        if r.get("status") != 200 or gid not in answers:
            continue
        pairs += 1
        agreed += _decisive(r.get("answer")) == _decisive(answers[gid])
    return pairs, agreed


def live_rollout(
    client: TorchServe,
    gateway: Gateway,
    store: Path,
    name: str,
    version: str,
    *,
    capture_dir: Path,
    canary: float = 10.0,
    shadow: float = 50.0,
    duration: float = 60.0,
    min_requests: int = 100,
    min_agreement: float | None = None,
    max_p99_ms: float | None = None,
    public_key: Path | None = None,
    model_keys: Path | None = None,
    registry: Registry | None = None,
    timeout: float = 120.0,
    log: Callable[[str], None] | None = None,
    poll_s: float = 1.0,
) -> RolloutReport:
    """Run a live rollout of `version` (see the module docstring); the report says what happened.

    Raises TorchServeError before anything changes when the gateway does not run or `name` has no default.
    """
    from torchship.archiver.names import check_name, check_version
    from torchship.gateway.nginx import Split
    from torchship.ops import capture as cap
    from torchship.ops.takedown import unregister_after_load

    check_name(name)
    check_version(version)
    split = Split(name, version, canary, shadow, owner=os.getpid())  # the percentages checked before anything changes
    if not canary and not shadow:
        raise TorchServeError("a live rollout sends the candidate some traffic: give --canary or --shadow above 0")
    if not gateway.is_running():
        raise TorchServeError("a live rollout splits the gateway's traffic: start it (torchship serve start --tls)")
    say = log or (lambda msg: None)
    try:
        current = client.describe(name)[0]
    except ModelNotFound:
        raise TorchServeError(f"{name} has no default version to judge {version} against: deploy one first") from None
    if current.version == version:
        raise TorchServeError(f"{name} {version} is already the default: nothing to roll out")
    report = RolloutReport(name, version, current.version)
    record = (lambda kind, **d: registry.record(name, version, kind, **d)) if registry else (lambda *a, **k: None)
    record("rollout_started", previous=current.version, live=True, canary=canary, shadow=shadow)

    captured_before = {v: cap._settings(capture_dir / name / v) for v in (current.version, version)}
    there_before = version in {d.version for d in client.versions(name)}  # not ours to take away then
    promoted = split_on = False
    handlers = _interruptible()  # SIGTERM and SIGHUP end the rollout as Ctrl-C does
    try:
        say(f"registering {name} {version} beside {current.version} ...")
        if register_beside(client, store, name, version, current, public_key, model_keys, timeout):
            record("registered", via="rollout --live")
        for v in (current.version, version):  # both answer with their records kept, paired by the gateway's id
            cap.write_settings(capture_dir, name, v, sample=1.0, drift_every_s=captured_before[v]["drift_every_s"])
        time.sleep(1.1)  # a worker looks at its capture settings at most once a second
        started = time.time()
        split_on = True  # before: an interrupt while nginx loads it still ends it
        gateway.set_split(split)
        record("live_split", canary=canary, shadow=shadow)
        say(
            f"live: {canary:g}% of {name}'s traffic to {version}, {shadow:g}% of the rest mirrored to it, "
            f"for {duration:g} s ..."
        )
        logs = [gateway.access_log.with_name("access.log.1"), gateway.access_log]
        last_said = time.monotonic()
        while time.time() - started < duration:
            time.sleep(min(poll_s, max(0.0, duration - (time.time() - started))))
            if time.monotonic() - last_said >= 10:
                last_said = time.monotonic()
                seen = live_figures(read_access(logs, name, started))
                say(
                    f"  {time.time() - started:4.0f} s: {seen['canary_requests']} canary, "
                    f"{seen['shadow_requests']} shadow, {seen['default'].requests} default requests"
                )
        time.sleep(0.5)  # the last answers' log lines and records are written just after the answers
        seen = live_figures(read_access(logs, name, started))
        since = [r for r in cap.records(capture_dir, name, current.version) if float(r.get("time", 0)) >= started]
        mine = [r for r in cap.records(capture_dir, name, version) if float(r.get("time", 0)) >= started]
        pairs, agreed = shadow_agreement(since, mine)
        default, cand = seen["default"], seen["candidate"]
        report.figures.update(
            default=default.to_dict(),
            candidate=cand.to_dict(),
            canary_requests=seen["canary_requests"],
            shadow_requests=seen["shadow_requests"],
            client_errors=seen["client_errors"],
            shadow_pairs=pairs,
            agreement=round(agreed / pairs, 4) if pairs else None,
        )
        say(
            f"{version}: {cand.requests} requests ({seen['canary_requests']} canary, {seen['shadow_requests']} "
            f"shadow), error rate {cand.error_rate:.4f}, p99 {cand.p99_ms} ms; {current.version}: "
            f"{default.requests} requests, error rate {default.error_rate:.4f}, p99 {default.p99_ms} ms; "
            f"agreement {report.figures['agreement']} on {pairs} shadow pairs"
        )
        agreement_needed = DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement
        p99_budget = max_p99_ms
        if p99_budget is None and default.p99_ms is not None:
            p99_budget = round(default.p99_ms * P99_FACTOR + P99_SLACK_MS, 2)
        report.figures["thresholds"] = {
            "min_requests": min_requests,
            "max_error_rate": round(default.error_rate + ERROR_MARGIN, 4),
            "max_p99_ms": p99_budget,
            "min_agreement": agreement_needed if pairs else None,
        }
        gates = [
            (
                "traffic",
                cand.requests < min_requests,
                f"{cand.requests} live requests reached {version} < {min_requests}",
            ),
            (
                "errors",
                cand.error_rate > default.error_rate + ERROR_MARGIN,
                f"error rate {cand.error_rate:.4f} > {default.error_rate:.4f} + {ERROR_MARGIN}",
            ),
            (
                "latency",
                p99_budget is not None and cand.p99_ms is not None and cand.p99_ms > p99_budget,
                f"p99 {cand.p99_ms} ms > {p99_budget} ms",
            ),
            (
                "agreement",
                pairs > 0 and agreed / pairs < agreement_needed,
                f"agreement {report.figures['agreement']} < {agreement_needed} on {pairs} shadow pairs",
            ),
        ]
        failed = next(((g, why) for g, bad, why in gates if bad), None)
        record("live_judged", **_flat(report.figures))
        if failed:
            report.gate, report.reason = failed
            raise _LiveFailed()
        client.set_default(name, version)
        promoted = True
        gateway.set_split(None, model=name, version=version)
        split_on = False
        settle_promoted(client, report, current, record, say)
        return report
    except (_LiveFailed, TorchServeError, ValueError) as exc:
        if not isinstance(exc, _LiveFailed):
            report.gate, report.reason = report.gate or "deploy", str(exc)
        record("rollout_failed", gate=report.gate, reason=report.reason, live=True, **_flat(report.figures))
        say(
            f"live rollout of {name} {version} FAILED at the {report.gate} gate: {report.reason}; "
            f"{current.version} keeps serving"
        )
        return report
    finally:
        # whatever happened (a failed gate, an error, Ctrl-C, SIGTERM): the default serves 100% before V goes
        # away; a second Ctrl-C cannot cut this short
        _ignore_interrupts(handlers)
        try:
            if not report.passed and report.gate is None:
                say(f"interrupted: ending the live rollout of {name} {version}; {current.version} keeps serving")
                record("rollout_interrupted", live=True)
            for v, before in captured_before.items():
                if before["sample"]:
                    cap.write_settings(capture_dir, name, v, **{k: before[k] for k in before})
                else:
                    cap.turn_off(capture_dir, name, v)
            if split_on:
                gateway.set_split(None, model=name, version=version)
            if not there_before and not promoted:
                time.sleep(1.0)  # the split's last requests to V finish before its workers stop
                try:
                    unregister_after_load(client, name, version=version)
                    record("unregistered", via="rollout --live", reason=report.gate or "interrupted")
                except TorchServeError:
                    pass
        finally:
            _restore(handlers)


def _interruptible() -> dict[int, Any]:
    """Have SIGTERM and SIGHUP interrupt this process as Ctrl-C does (main thread only); the old handlers.

    A signal this process was told to ignore (nohup's SIGHUP, a background job's SIGINT) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old: dict[int, Any] = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, signal.default_int_handler)
    return old


def _ignore_interrupts(handlers: dict[int, Any]) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in handlers:
            signal.signal(sig, signal.SIG_IGN)


def _restore(handlers: dict[int, Any]) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig, handler in handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class _LiveFailed(Exception):
    pass
