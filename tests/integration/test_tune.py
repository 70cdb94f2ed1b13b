"""`torchship tune` on a real TorchServe: a guided search that returns the fastest settings
within the latency budget and writes them where `apply` reads them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import rows
from torchship.perf.tune import best_trial
from torchship.perf.tune import tune as run_tune

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tune_finds_the_fastest_settings_within_the_budget(
    client, store, key_dir, public_key, mlp_archive, mlp_deployed
):
    payloads = [{"data": r} for r in rows(20, seed=4)]
    before = sorted(p.name for p in store.iterdir())
    trials, best = run_tune(
        client,
        store,
        "mlp",
        "1.0",
        payloads,
        slo_p99_ms=5000,
        concurrency=8,
        seconds=1.5,
        warmup=0.5,
        cores=2,
        public_key=public_key,
        key_dir=key_dir,
        log=lambda line: None,
    )
    # batch sweep (4), delay sweep (when batching wins), workers, threads: guided, not the 4x4x2x2 grid
    assert 6 <= len(trials) <= 11
    # the delay sweep, when it runs, includes 0 ms (no wait for a batch's second request)
    swept = {t.batch_size for t in trials if (t.workers, t.threads) == (1, 1) and t.max_batch_delay in (1, 10)}
    assert all((1, b, 0, 1) in {(t.workers, t.batch_size, t.max_batch_delay, t.threads) for t in trials} for b in swept)
    # one load (8 callers): each trial's figures are its point at that load
    assert all([p.concurrency for p in t.points] == [8] and t.points[0].p99_ms == t.p99_ms for t in trials)
    # tune's rule: the two fastest single runs within the budget are measured again, and the better
    # of those two on the mean of their runs wins (a lucky single run cannot)
    leaders = [t for t in trials if t.runs == 2]
    assert len(leaders) == 2 and all(t.meets(5000) for t in leaders)
    assert best in leaders and best == best_trial(leaders, 5000) and best.meets(5000)
    # the threads step: one worker with both cores, served from a signed, verified trial copy
    threaded = [t for t in trials if t.threads == 2]
    assert [(t.workers, t.failed) for t in threaded] == [(1, 0)] and threaded[0].throughput > 0
    assert all(t.workers * t.threads <= 2 for t in trials)
    # trials leave nothing behind: no model, no archive copy, no signature
    assert not [m.name for m in client.list_models() if m.name.startswith("tune-")]
    assert sorted(p.name for p in store.iterdir()) == before
    # an impossible budget: the lowest p99 is returned, flagged as not meeting it
    assert not best_trial(trials, 0.001).meets(0.001)


def test_tune_refuses_an_archive_that_fails_verification(client, store, key_dir, public_key, mlp_run):
    """tune registers nothing that has not passed the same check as deploy."""
    from tests.fixtures import zipcraft
    from torchship import archiver
    from torchship.archiver import ArchiveSpec, example_spec
    from torchship.sdk.errors import VerificationError

    spec = example_spec("mlp", mlp_run, "1.0")
    path = archiver.package(
        ArchiveSpec(
            "tunebad", "1.0", spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
        ),
        store,
        key_dir,
        force=True,
    ).path
    zipcraft.hide_entry(path, "mlp_handler.py", b"import os\n")
    with pytest.raises(VerificationError, match="layout"):
        run_tune(
            client,
            store,
            "tunebad",
            "1.0",
            [{"data": rows(1)[0]}],
            slo_p99_ms=5000,
            seconds=1,
            public_key=public_key,
            key_dir=key_dir,
            log=lambda line: None,
        )
    assert not [m for m in client.list_models() if m.name.startswith("tune-")]


def test_tune_cli_writes_the_winner_into_the_desired_state(server, tmp_path, public_key, mlp_archive):
    """Raw-bytes payloads (.npy here) too, as `bench` takes them."""
    import numpy as np

    np.save(tmp_path / "row.npy", np.asarray(rows(1)[0], dtype=np.float32))
    target = tmp_path / "deploy.yaml"
    target.write_text(
        yaml.safe_dump({"models": {"mlp": {"versions": ["1.0"], "default": "1.0"}, "other": {"versions": ["3.0"]}}})
    )
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "torchship"),
            "--config",
            str(server.effective_config_path),
            "tune",
            "mlp",
            "--slo-p99-ms",
            "5000",
            "--seconds",
            "0.5",
            "--profile",
            "1:0.6,4:0.4",
            "--plot",
            str(tmp_path / "curves.png"),
            "--version",
            "1.0",
            "--payload",
            str(tmp_path / "row.npy"),
            "--public-key",
            str(public_key),
            "--write",
            str(target),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    doc = yaml.safe_load(target.read_text())
    best = result["best"]
    assert doc["models"]["mlp"]["batch_size"] == best["batch_size"]
    assert doc["models"]["mlp"]["workers"] == {"min": best["workers"], "max": best["workers"]}
    assert doc["models"]["other"] == {"versions": ["3.0"]}  # other models untouched
    assert all(t["failed"] == 0 for t in result["trials"])  # the .npy body was understood
    # threads are part of the archive: a winner with other threads than packaged says how to repackage
    assert result["repackage"] == (
        None if best["threads"] == 1 else f"torchship package mlp --threads {best['threads']}"
    )
    # tuned for a mix of loads: every trial measured at 1 and 4 callers, the p99 its worse one
    assert result["profile"] == {"1": 0.6, "4": 0.4}
    for t in result["trials"]:
        assert [p["concurrency"] for p in t["points"]] == [1, 4]
        assert t["p99_ms"] == max(p["p99_ms"] for p in t["points"])
    # then the winner and a plain deploy's settings (mlp: its serving defaults), at 1, 4, 16 and 64 callers
    assert sorted(result["curves"]) == ["default", "tuned"]
    for points in result["curves"].values():
        assert [p["concurrency"] for p in points] == [1, 4, 16, 64]
        assert all(p["failed"] == 0 and p["throughput"] > 0 for p in points)
    assert result["plot"] == str(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [m.name for m in ts_models(server)]  # the curves' registrations are gone too


def ts_models(server):
    with server.client() as c:
        return [m for m in c.list_models() if m.name.startswith("tune-")]


def test_bench_and_tune_with_wrk(client, store, public_key, mlp_archive, mlp_deployed):
    """wrk engine: the same figures from a C load generator (the Python one bottlenecks tiny models)."""
    from torchship.perf import wrk
    from torchship.perf.bench import bench

    # make test and make integration install wrk (scripts/setup-os.sh): its absence is a failure, not a skip
    assert wrk.available(), "wrk is not installed: run make test (or scripts/setup-os.sh wrk)"
    body = {"data": rows(1)[0]}
    figures = bench(client, "mlp", [body], concurrency=8, duration=2, engine="wrk")
    assert figures["engine"] == "wrk" and figures["failed"] == 0 and figures["sent"] > 100
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] and figures["throughput_rps"] > 0
    trials, best = run_tune(
        client,
        store,
        "mlp",
        "1.0",
        [body],
        slo_p99_ms=5000,
        concurrency=8,
        seconds=1,
        warmup=0,
        public_key=public_key,
        log=lambda line: None,
        engine="wrk",
    )
    assert best.meets(5000) and all(t.failed == 0 for t in trials)
