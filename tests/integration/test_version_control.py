"""Model version control on a real TorchServe: guarded rollouts under load, rollback, plan/apply,
restart, and lineage."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from torchship import archiver
from torchship.archiver import ArchiveSpec, example_spec
from torchship.ops.desired import apply, parse_desired, plan
from torchship.ops.registry import Registry
from torchship.ops.rollout import load_golden, rollback, rollout
from torchship.perf.load import run_load
from torchship.train import mlp

from .conftest import ROOT, start_server

pytestmark = pytest.mark.integration
GOLDEN = load_golden(ROOT / "tests" / "golden" / "mlp.jsonl")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mlp_run):
    """Three checkpoints: two good ones (other training seeds) and one trained on shuffled labels."""
    ck = tmp_path_factory.mktemp("vc-checkpoints")
    good2 = mlp.train(ck, seed=1, quick=True, progress=False).run_dir
    bad = mlp.train(ck, seed=2, quick=True, progress=False, shuffle_labels=True).run_dir
    return {"1.0": mlp_run, "2.0": good2, "3.0": bad}


def build_as(name, runs, store, key_dir, versions):
    for v in versions:
        spec = example_spec("mlp", runs[v], v)
        spec = ArchiveSpec(
            name, v, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
        )
        result = archiver.package(spec, store, key_dir, force=True)
        yield v, result


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(tmp_path_factory.mktemp("state") / "registry.db") as r:
        yield r


@pytest.fixture(scope="module")
def rmlp(client, store, key_dir, public_key, runs, registry):
    """Model `rmlp`: 1.0 serving as the default, 2.0 (good) and 3.0 (bad) packaged."""
    for v, result in build_as("rmlp", runs, store, key_dir, ["1.0", "2.0", "3.0"]):
        registry.record_archive(
            name="rmlp", version=v, digest=result.digest, path=result.path, provenance=result.provenance
        )
    report = apply(
        client,
        store,
        parse_desired({"models": {"rmlp": {"versions": ["1.0"], "batch_size": 4, "max_batch_delay_ms": 5}}}),
        public_key=public_key,
        registry=registry,
    )
    assert report.ok, report.error
    yield "rmlp"
    for d in client.versions("rmlp"):
        if not d.is_default:
            client.unregister("rmlp", d.version)
    client.unregister("rmlp")


def test_rollouts_and_rollback_under_steady_load_lose_no_request(client, store, public_key, rmlp, registry):
    stop = threading.Event()
    box = {}
    loader = threading.Thread(
        target=lambda: box.setdefault(
            "load", run_load(client, rmlp, [g.input for g in GOLDEN], concurrency=2, stop=stop)
        )
    )
    loader.start()
    try:
        good = rollout(
            client,
            store,
            rmlp,
            "2.0",
            golden=GOLDEN,
            min_agreement=0.7,
            max_p99_ms=2000,
            public_key=public_key,
            registry=registry,
            load_requests=100,
        )
        assert good.passed, good.to_dict()
        assert good.previous == "1.0" and good.figures["accuracy"] >= 0.8 and good.figures["agreement"] >= 0.7
        assert client.describe(rmlp)[0].version == "2.0"
        assert {d.version for d in client.versions(rmlp)} == {"1.0", "2.0"}  # 1.0 kept for rollback

        bad = rollout(
            client, store, rmlp, "3.0", golden=GOLDEN, public_key=public_key, registry=registry, load_requests=100
        )
        assert not bad.passed and bad.gate == "golden"
        assert bad.figures["accuracy"] < 0.3 <= bad.figures["previous_accuracy"]
        assert client.describe(rmlp)[0].version == "2.0"  # the default never changed
        assert {d.version for d in client.versions(rmlp)} == {"1.0", "2.0"}  # 3.0 removed again

        assert rollback(client, rmlp, registry) == ("2.0", "1.0")
        assert client.describe(rmlp)[0].version == "1.0"
    finally:
        stop.set()
        loader.join()
    load = box["load"]
    assert load.sent > 50, load.to_dict()
    assert load.failed == 0, load.to_dict()

    kinds = [(e.version, e.kind) for e in registry.events(rmlp)]
    for expected in [
        ("2.0", "rollout_started"),
        ("2.0", "promoted"),
        ("2.0", "rollout_passed"),
        ("3.0", "rollout_failed"),
        ("3.0", "unregistered"),
        ("1.0", "rolled_back"),
    ]:
        assert expected in kinds
    failed = registry.events(rmlp, kinds=("rollout_failed",))[0]
    assert failed.detail["gate"] == "golden" and failed.detail["accuracy"] < 0.3


def test_shadow_and_latency_gates(client, store, public_key, rmlp, registry):
    tight = rollout(
        client,
        store,
        rmlp,
        "2.0",
        golden=GOLDEN,
        min_agreement=0.999,
        public_key=public_key,
        registry=registry,
        load_requests=20,
        warmup=0,
    )
    assert not tight.passed and tight.gate == "shadow"
    slow = rollout(
        client,
        store,
        rmlp,
        "2.0",
        golden=GOLDEN,
        max_p99_ms=0.001,
        public_key=public_key,
        registry=registry,
        load_requests=20,
        warmup=0,
    )
    assert not slow.passed and slow.gate == "latency" and slow.figures["p99_ms"] > 0.001
    assert client.describe(rmlp)[0].version == "1.0"


def test_history_traces_the_default_to_its_training_run(server, client, rmlp, runs, registry):
    default = client.describe(rmlp)[0].version
    record = registry.archive(rmlp, default)
    meta = json.loads((runs[default] / "meta.json").read_text())
    assert record.checkpoint_run == runs[default].name == meta["run"]
    assert record.data_fingerprint == meta["data"]["fingerprint"] and record.metrics == meta["metrics"]


def test_plan_apply_idempotent_and_restored_after_restart(tmp_path, store, key_dir, public_key, runs):
    for _ in build_as("amlp", runs, store, key_dir, ["1.0", "2.0"]):
        pass
    desired = parse_desired(
        {
            "models": {
                "amlp": {
                    "versions": ["1.0", "2.0"],
                    "default": "1.0",
                    "workers": {"min": 1, "max": 2},
                    "batch_size": 4,
                    "max_batch_delay_ms": 20,
                }
            }
        }
    )
    server = start_server(tmp_path / "srv", store)
    try:
        with server.client() as c:
            first = plan(c, desired)
            assert [(a.kind, a.version) for a in first] == [
                ("register", "1.0"),
                ("register", "2.0"),
                ("set-default", "1.0"),
            ]
            assert apply(c, store, desired, public_key=public_key).ok
            assert plan(c, desired) == []
            assert apply(c, store, desired, public_key=public_key).done == []

            def state():
                return {
                    (
                        d.version,
                        d.is_default,
                        d.min_workers,
                        d.max_workers,
                        d.batch_size,
                        d.max_batch_delay,
                        d.ready_workers >= 1,
                    )
                    for d in c.versions("amlp")
                }

            before = state()
            assert before == {("1.0", True, 1, 2, 4, 20, True), ("2.0", False, 1, 2, 4, 20, True)}

        server.stop()
        server.start(timeout=120)
        with server.client() as c:
            assert len(plan(c, desired)) == 3  # nothing survived the restart (--ncs)
            assert apply(c, store, desired, public_key=public_key).ok
            assert state() == before and plan(c, desired) == []

            # a version no longer listed is unregistered, after the default moved to a listed one
            only2 = parse_desired(
                {
                    "models": {
                        "amlp": {
                            "versions": ["2.0"],
                            "workers": {"min": 1, "max": 2},
                            "batch_size": 4,
                            "max_batch_delay_ms": 20,
                        }
                    }
                }
            )
            assert [(a.kind, a.version) for a in plan(c, only2)] == [("set-default", "2.0"), ("unregister", "1.0")]
            assert apply(c, store, only2, public_key=public_key).ok
            assert [(d.version, d.is_default) for d in c.versions("amlp")] == [("2.0", True)]
    finally:
        server.stop()


def test_apply_stops_cleanly_half_way(client, store, public_key, rmlp):
    desired = parse_desired(
        {"models": {rmlp: {"versions": ["1.0", "9.0"], "default": "9.0", "batch_size": 4, "max_batch_delay_ms": 5}}}
    )
    report = apply(client, store, desired, public_key=public_key)
    assert not report.ok and report.failed.kind == "register" and report.failed.version == "9.0"
    assert "archive not found" in report.error
    assert [(a.kind, a.version) for a in report.not_done] == [("set-default", "9.0"), ("unregister", "2.0")]
    assert client.describe(rmlp)[0].version == "1.0"  # the default keeps serving
    assert client.predict(rmlp, GOLDEN[0].input)["class_id"] in range(10)


def test_cli_rollout_history_and_exit_codes(server, store, rmlp, public_key):
    """The CLI's view of the same: a rejected rollout exits 11, history lists lineage and events."""
    torchship = str(Path(sys.executable).parent / "torchship")

    def cli(*args):
        return subprocess.run(
            [torchship, "--config", str(server.effective_config_path), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = cli(
        "rollout",
        rmlp,
        "--version",
        "3.0",
        "--golden",
        str(ROOT / "tests" / "golden" / "mlp.jsonl"),
        "--requests",
        "20",
        "--warmup",
        "0",
        "--public-key",
        str(public_key),
    )
    assert r.returncode == 11 and "rejected at the golden gate" in r.stderr
    r = cli("history", rmlp, "--json")
    assert r.returncode == 0
    events = json.loads(r.stdout)["events"]
    assert events[0]["kind"] == "rollout_failed" and events[0]["version"] == "3.0"
