"""Live rollouts through a real nginx gateway in front of the session's real TorchServe, under live traffic:
a version trained on shuffled labels is rejected by what its shadow answers say, a good one is promoted,
and the callers see no error either way."""

from __future__ import annotations

from collections import Counter

import pytest

from torchship import TorchServe, archiver
from torchship.archiver import ArchiveSpec, example_spec
from torchship.ops import capture as cap
from torchship.ops.deploy import deploy
from torchship.ops.live import live_rollout
from torchship.ops.registry import Registry

from .conftest import NEEDS_NGINX, Callers, start_gateway

pytestmark = [
    pytest.mark.integration,
    NEEDS_NGINX,
]
NAME = "lmlp"


@pytest.fixture(scope="module")
def versions(tmp_path_factory, mlp_run, store, key_dir):
    """lmlp 1.0 (the session's mlp run), 2.0 (another seed: good) and 3.0 (shuffled labels), packaged."""
    from torchship.train import mlp

    ck = tmp_path_factory.mktemp("live-checkpoints")
    runs = {
        "1.0": mlp_run,
        "2.0": mlp.train(ck, seed=1, quick=True, progress=False).run_dir,
        "3.0": mlp.train(ck, seed=2, quick=True, progress=False, shuffle_labels=True).run_dir,
    }
    for version, run in runs.items():
        spec = example_spec("mlp", run, version)
        spec = ArchiveSpec(
            NAME, version, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
        )
        archiver.package(spec, store, key_dir, force=True)
    return runs


@pytest.fixture(scope="module")
def gateway(server, client, store, public_key, versions):
    deploy(client, store, NAME, "1.0", public_key=public_key)
    gw = start_gateway(server)
    try:
        yield gw
    finally:
        gw.stop()
        for d in client.versions(NAME):
            if not d.is_default:
                client.unregister(NAME, d.version)
        client.unregister(NAME)


class Traffic(Callers):
    """Callers of /predictions/lmlp through the gateway (no version named), counting what they got."""

    def __init__(self, server, rows) -> None:
        super().__init__(threads=2)
        self.server, self.rows = server, rows
        self.statuses: Counter[str] = Counter()

    def _run(self, i: int) -> None:
        with TorchServe.from_config(self.server.effective_config_path, retries=0, gateway=True) as ts:
            n = i
            while not self.stop.is_set():
                try:
                    ts.predict(NAME, {"data": self.rows[n % len(self.rows)]})
                    self.statuses["ok"] += 1
                except Exception as exc:  # noqa: BLE001 - every failure a caller sees is counted
                    self.statuses[type(exc).__name__] += 1
                n += 2


def held_out_rows(mlp_run, n=200):
    from torchship.train import held_out

    return held_out("mlp", mlp_run).inputs(n)[0].numpy().tolist()


def judge(client, gateway, store, public_key, server, version, registry):
    return live_rollout(
        client,
        gateway,
        store,
        NAME,
        version,
        capture_dir=server.capture_dir,
        canary=20,
        shadow=100,
        duration=6,
        min_requests=30,
        min_agreement=0.6,
        max_p99_ms=2000,  # judged in the unit tests: a shared 2-core machine's p99 is not a verdict here
        public_key=public_key,
        registry=registry,
    )


def test_a_shuffled_version_is_rejected_and_a_good_one_promoted_under_live_traffic(
    server, client, store, public_key, mlp_run, gateway, tmp_path
):
    rows = held_out_rows(mlp_run)
    with Registry(tmp_path / "registry.db") as registry:
        with Traffic(server, rows) as bad_traffic:
            bad = judge(client, gateway, store, public_key, server, "3.0", registry)
        assert not bad.passed and bad.gate == "agreement", bad.to_dict()
        f = bad.figures
        assert f["canary_requests"] > 0 and f["shadow_requests"] > 0 and f["shadow_pairs"] >= 20
        assert f["agreement"] < 0.5 and f["client_errors"] == 0
        assert client.describe(NAME)[0].version == "1.0"  # the default never changed
        assert "3.0" not in {d.version for d in client.versions(NAME)}  # the candidate is gone
        assert gateway.splits() == ()  # the default serves 100% again
        # the shadow's answers were captured beside the default's, under the same gateway request id
        default_ids = {r.get("gateway_id") for r in cap.records(server.capture_dir, NAME, "1.0")}
        shadow_ids = {r.get("gateway_id") for r in cap.records(server.capture_dir, NAME, "3.0")}
        assert len((default_ids & shadow_ids) - {None}) >= 20
        assert not cap._settings(server.capture_dir / NAME / "1.0")["sample"]  # capture back as it was: off

        with Traffic(server, rows) as good_traffic:
            good = judge(client, gateway, store, public_key, server, "2.0", registry)
        assert good.passed, good.to_dict()
        assert good.figures["agreement"] >= 0.6 and good.figures["client_errors"] == 0
        assert client.describe(NAME)[0].version == "2.0"
        assert gateway.splits() == ()
        kinds = [e.kind for e in registry.events(NAME)]
        for kind in ("live_split", "live_judged", "rollout_failed", "unregistered", "promoted", "rollout_passed"):
            assert kind in kinds, kinds
    # zero client errors: every caller got an answer the whole time
    for traffic in (bad_traffic, good_traffic):
        assert traffic.statuses["ok"] > 50 and set(traffic.statuses) == {"ok"}, traffic.statuses
