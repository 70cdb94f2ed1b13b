"""Faults on a real TorchServe: worker killed under load, response timeouts, a full queue, the
server killed and restarted. Nothing a caller sent is lost without a clear error."""

import json
import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.strategies import GOOD
from torchship import TorchServe, archiver
from torchship import errors as E
from torchship.archiver import ArchiveSpec
from torchship.ops.desired import apply, parse_desired, plan
from torchship.ops.registry import Registry
from torchship.perf.load import run_load

from .conftest import ROOT, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FORBIDDEN = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory, store):
    """A server of its own, started from an environment that has the pickle-enabling variable set."""
    os.environ[FORBIDDEN] = "1"
    try:
        server = start_server(tmp_path_factory.mktemp("fault-server"), store)
    finally:
        del os.environ[FORBIDDEN]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sleepy_archive(store):
    spec = ArchiveSpec("sleepy", "1.0", ROOT / "tests" / "fixtures" / "sleepy_handler.py")
    return archiver.build(spec, store, force=True).path


def processes(server):
    root = psutil.Process(server.pid())
    return [root] + root.children(recursive=True)


def test_no_process_of_the_server_can_unpickle_code(fault_server, mlp_archive):
    with fault_server.client() as c:
        c.register(mlp_archive.name, model_name="envcheck", initial_workers=1)
        try:
            procs = processes(fault_server)
            assert len(procs) >= 2  # the frontend and at least one worker
            for p in procs:
                assert FORBIDDEN not in p.environ(), p.cmdline()[:2]
        finally:
            c.unregister("envcheck")


def test_worker_killed_under_load_loses_no_prediction(fault_server, mlp_archive):
    with fault_server.client() as safe, fault_server.client(retries=0) as raw:
        safe.register(mlp_archive.name, model_name="kill", initial_workers=2)
        try:
            body = json.loads(GOOD["mlp"])
            box = {}
            threads = [
                threading.Thread(
                    target=lambda k=k, c=c: box.__setitem__(k, run_load(c, "kill", [body], concurrency=3, duration=6))
                )
                for k, c in (("safe", safe), ("raw", raw))
            ]
            for t in threads:
                t.start()
            time.sleep(1.5)
            victim = safe.describe("kill")[0].workers[0].pid
            os.kill(victim, signal.SIGKILL)
            for t in threads:
                t.join()
            with_retry, without = box["safe"], box["raw"]
            assert with_retry.sent > 100 and with_retry.failed == 0, with_retry.to_dict()
            # without the client's retry, the requests on the killed worker fail with a clear 500
            assert set(without.statuses) <= {200, 500, 507}
            assert all("Worker died" in e or "worker" in e.lower() for e in without.errors)
            d = safe.wait_until_ready("kill", timeout=60)
            assert d.ready_workers == 2 and victim not in {w.pid for w in d.workers}
        finally:
            safe.unregister("kill")


def test_response_timeout_is_a_clear_error_and_the_model_recovers(fault_server, sleepy_archive):
    with fault_server.client(retries=0) as c:
        c.register(sleepy_archive.name, model_name="slow", initial_workers=1, response_timeout=1)
        try:
            with pytest.raises(E.WorkerDied, match="response_timeout"):
                c.predict("slow", {"sleep": 4})
            deadline = time.monotonic() + 60
            while True:  # the worker restarts on its own; no server restart
                try:
                    assert c.predict("slow", {"sleep": 0}) == {"slept": 0}
                    break
                except (E.WorkerDied, E.ServiceUnavailable):
                    assert time.monotonic() < deadline
                    time.sleep(0.5)
            assert c.ping() == "Healthy"
        finally:
            c.unregister("slow")


def test_a_full_job_queue_answers_503_at_once_and_recovers(tmp_path, store, sleepy_archive):
    server = start_server(tmp_path / "small-queue", store, job_queue_size="2")
    try:
        with server.client(retries=0) as c:
            c.register(sleepy_archive.name, model_name="slow", initial_workers=1)
            url = server.config().inference_url + "/predictions/slow"
            key = json.loads(server.key_file.read_text())["inference"]["key"]

            def one(_):
                start = time.monotonic()
                r = requests.post(url, json={"sleep": 1}, headers={"Authorization": f"Bearer {key}"}, timeout=60)
                return r.status_code, time.monotonic() - start

            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(one, range(8)))
            codes = [code for code, _ in results]
            assert 503 in codes and 200 in codes and set(codes) <= {200, 503}
            assert all(t < 1.0 for code, t in results if code == 503)  # refused at once, not after waiting
            with pytest.raises(E.ServiceUnavailable, match="No worker could take the request"):
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda _: c.predict("slow", {"sleep": 1}), range(8)))
            time.sleep(3)
            assert c.predict("slow", {"sleep": 0}) == {"slept": 0}
    finally:
        server.stop()


def test_server_killed_then_apply_restores_everything(fault_server, store, key_dir, public_key, tmp_path, mlp_run):
    spec = archiver.example_spec("mlp", mlp_run, "1.0")
    for v in ("1.0", "2.0"):
        archiver.package(
            ArchiveSpec(
                "restart", v, spec.handler, spec.weights, extra_files=spec.extra_files, model_config=spec.model_config
            ),
            store,
            key_dir,
            force=True,
        )
    desired = parse_desired(
        {
            "models": {
                "restart": {
                    "versions": ["1.0", "2.0"],
                    "default": "2.0",
                    "workers": {"min": 1, "max": 1},
                    "batch_size": 4,
                    "max_batch_delay_ms": 15,
                }
            }
        }
    )
    registry = Registry(tmp_path / "registry.db")
    with fault_server.client() as c:
        assert apply(c, store, desired, public_key=public_key, registry=registry).ok
        before = {
            (d.version, d.is_default, d.batch_size, d.max_batch_delay, d.min_workers) for d in c.versions("restart")
        }
        answer = c.predict("restart", json.loads(GOOD["mlp"]))
    events_before = len(registry.events("restart"))

    for p in processes(fault_server):
        p.kill()  # the frontend and every worker, at once: a crash
    psutil.wait_procs(processes_safe(fault_server), timeout=10)
    assert fault_server.start(timeout=120) is True

    with fault_server.client() as c:
        assert len(plan(c, desired)) == 3  # nothing survived
        assert apply(c, store, desired, public_key=public_key, registry=registry).ok
        after = {
            (d.version, d.is_default, d.batch_size, d.max_batch_delay, d.min_workers) for d in c.versions("restart")
        }
        assert after == before
        assert c.predict("restart", json.loads(GOOD["mlp"])) == answer
        for v in ("1.0", "2.0"):
            c.unregister("restart", v) if v == "1.0" else None
        c.unregister("restart")
    # the registry and the store came through intact
    assert sqlite3.connect(registry.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(registry.events("restart")) > events_before
    for archive in sorted(store.glob("restart-*.mar")):
        assert archiver.verify_archive(archive, public_key=public_key).ok


def processes_safe(server):
    try:
        return processes(server)
    except (psutil.Error, TypeError, ValueError):
        return []


def test_a_stopped_server_is_one_clear_error(tmp_path, store):
    server = start_server(tmp_path / "gone", store)
    client = server.client(retries=1, backoff=0)
    assert client.ping() == "Healthy"
    server.stop()
    with pytest.raises(E.ServerUnreachable, match="is it running"):
        client.ping()
    with pytest.raises(E.ConfigError, match="Is the server running"):
        TorchServe.from_config(server.effective_config_path).ping()
