"""The exported model-store layout serves: a TorchServe started from the exported config (its
addresses moved to free loopback ports) loads every model with the declared state."""

import pytest

from torchship import LocalServer
from torchship.desired import parse_desired
from torchship.export import export
from torchship.server import free_port_overrides
from torchship.testing import GOOD

pytestmark = pytest.mark.integration


def test_exported_snapshot_loads_the_declared_state(tmp_path, store, public_key, example_archives):
    desired = parse_desired({"models": {"mlp": {"versions": ["1.0"], "batch_size": 8, "max_batch_delay_ms": 10},
                                        "sentiment": {"versions": ["1.0"], "batch_size": 4, "max_batch_delay_ms": 5,
                                                      "workers": {"min": 1, "max": 2}}}})
    export("kserve", desired, store, tmp_path / "out", public_key=public_key)
    layout = tmp_path / "out" / "model-store"
    server = LocalServer(layout / "config" / "config.properties", tmp_path / "srv", model_store=layout / "model-store",
                         overrides={**free_port_overrides(), "disable_token_authorization": "false"})
    server.start(timeout=120)
    try:
        with server.client() as c:
            import json

            for name, want in desired.models.items():
                d = c.wait_until_ready(name, timeout=60)
                assert (d.version, d.is_default, d.batch_size, d.max_batch_delay, d.min_workers, d.max_workers) == \
                    ("1.0", True, want.batch_size, want.max_batch_delay_ms, want.min_workers, want.max_workers)
                assert c.predict(name, json.loads(GOOD[name]))
    finally:
        server.stop()
