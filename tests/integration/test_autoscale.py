"""The autoscaler against a real TorchServe under a load ramp: idle -> heavy -> idle."""

import threading
import time

import pytest

from torchship import archiver
from torchship.archiver import ArchiveSpec
from torchship.ops.autoscale import Autoscaler
from torchship.perf.load import run_load

from .conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BODY = {"sleep": 0.02}  # 20 ms of (sleeping) work per request: one worker serves ~50 req/s


@pytest.fixture(scope="module")
def auto(client, store):
    path = archiver.build(
        ArchiveSpec("sleepy", "1.0", ROOT / "tests" / "fixtures" / "sleepy_handler.py"), store, force=True
    ).path
    client.register(path.name, model_name="auto", initial_workers=1, batch_size=1)
    yield "auto"
    client.unregister("auto")


def test_scales_up_under_load_and_back_down_when_idle(client, auto):
    fixed = run_load(client, auto, [BODY], concurrency=8, duration=6)
    assert fixed.failed == 0

    log: list[str] = []
    scaler = Autoscaler(
        client,
        auto,
        min_workers=1,
        max_workers=4,
        target_queue_ms=30,
        interval=0.5,
        up_cooldown=1.0,
        down_cooldown=2.0,
        down_stable=3,
        log=log.append,
    )
    loop = threading.Thread(target=scaler.run, kwargs={"duration": 40})
    loop.start()
    try:
        time.sleep(2)  # idle
        heavy_start = time.monotonic()
        ramp = run_load(client, auto, [BODY], concurrency=8, duration=6)  # the heavy phase, while scaling up
        steady = run_load(client, auto, [BODY], concurrency=8, duration=10)  # the rest of it
        heavy_end = time.monotonic()
        peak = max(w for _, w, _, _ in scaler.samples)
        deadline = time.monotonic() + 20  # idle again: wait for the way down
        while client.describe(auto)[0].min_workers > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        scaler.stop()
        loop.join()

    ups = [d for d in scaler.decisions if d.workers_to > d.workers_from]
    downs = [d for d in scaler.decisions if d.workers_to < d.workers_from]
    assert ups and all(heavy_start - 1 <= d.time <= heavy_end for d in ups), log
    assert peak >= 3, log
    assert downs and client.describe(auto)[0].min_workers == 1, log
    # the same load: the autoscaled heavy phase beats one fixed worker, and no request failed
    # (scale events included: the client's safe retry covers a request on a worker being stopped)
    assert ramp.failed == 0 and steady.failed == 0 and fixed.failed == 0
    assert steady.p(99) < fixed.p(99) and steady.throughput > 1.5 * fixed.throughput, (
        steady.to_dict(),
        fixed.to_dict(),
    )
    assert ramp.p(50) < fixed.p(50)
    # no flapping: never more changes than the load has phases justify
    assert len(scaler.decisions) <= 6, log
    print(
        f"\nfixed 1 worker: {fixed.to_dict()}\nautoscaled, ramp: {ramp.to_dict()}\nautoscaled, steady: "
        f"{steady.to_dict()}\n" + "\n".join(log)
    )
