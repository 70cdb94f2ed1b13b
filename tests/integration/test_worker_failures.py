"""A model that cannot load says why: deploy and scale failures name the worker's exception and
the log line to read, and `torchship logs` shows a model's lines with the keys masked (a real
TorchServe of its own, so that its logs hold only what this module did)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from torchship import archiver
from torchship import errors as E
from torchship.archiver import ArchiveSpec

from .conftest import ROOT, start_server

TORCHSHIP = str(Path(sys.executable).parent / "torchship")
FIXTURES = ROOT / "tests" / "fixtures"
LINE_REF = r"\(see (?P<file>\S+model_log\.log), line (?P<line>\d+)\)"


@pytest.fixture(scope="module")
def logs_server(tmp_path_factory, store):
    server = start_server(tmp_path_factory.mktemp("failures-server"), store)
    yield server
    server.stop()


def cli(server, *args, timeout=180):
    return subprocess.run(
        [TORCHSHIP, "--config", str(server.effective_config_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def registered(server) -> set[str]:
    with server.client() as c:
        return {m.name for m in c.list_models()}


def the_line(stderr: str) -> tuple[Path, int, str]:
    """The log file and line an error names, and that line's text (it must exist)."""
    found = re.search(LINE_REF, stderr)
    assert found, stderr
    path, number = Path(found["file"]), int(found["line"])
    return path, number, path.read_text().splitlines()[number - 1]


def test_deploy_names_the_missing_module_of_a_handler(logs_server, store, key_dir, public_key):
    # built with archiver directly: packaging's own import check would have refused it (as on a
    # machine that has torchvision, shipping to a server that has not)
    spec = ArchiveSpec("tvfail", "1.0", FIXTURES / "torchvision_handler.py")
    archiver.package(spec, store, key_dir, force=True)
    r = cli(logs_server, "deploy", "tvfail", "--version", "1.0", "--public-key", str(public_key))
    assert r.returncode == 10, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # one line, which says why
    assert "tvfail 1.0 failed to load and was removed again" in lines[0]
    assert "the worker failed with ModuleNotFoundError: No module named 'torchvision'" in lines[0]
    assert "ts.torch_handler" not in lines[0]  # not TorchServe's misleading second import error
    path, _, text = the_line(r.stderr)
    assert path == logs_server.log_dir / "model_log.log"
    assert text.endswith("ModuleNotFoundError: No module named 'torchvision'") and "W-" in text
    assert "tvfail" not in registered(logs_server)  # nothing left half-registered

    # the same traceback through `torchship logs`, frames included
    r = cli(logs_server, "logs", "tvfail", "--lines", "200")
    assert r.returncode == 0, r.stderr
    assert "torchvision_handler.py" in r.stdout and "No module named 'torchvision'" in r.stdout
    assert "Load model failed: tvfail" in r.stdout  # the frontend's line about it too


def test_scale_names_why_a_new_worker_died(logs_server, store):
    archiver.build(ArchiveSpec("single", "1.0", FIXTURES / "single_worker_handler.py"), store, force=True)
    with logs_server.client() as c:
        c.register("single-1.0.mar", initial_workers=1)
        try:
            r = cli(logs_server, "scale", "single", "--version", "1.0", "--min", "2")
            assert r.returncode == 10, r.stdout + r.stderr
            assert "RuntimeError: single_worker_handler: a second worker refused to start" in r.stderr
            _, _, text = the_line(r.stderr)
            assert "a second worker refused to start" in text

            # the library raises the same, with the cause as data
            with pytest.raises(E.ServerError) as info:
                c.scale("single", version="1.0", min_workers=3)
            assert info.value.cause is not None
            assert info.value.cause.line.startswith("RuntimeError: single_worker_handler")
        finally:
            c.unregister("single", "1.0")


def test_logs_show_one_models_lines_and_never_a_key(logs_server, store):
    archiver.build(ArchiveSpec("raising", "1.0", FIXTURES / "raising_handler.py"), store, force=True)
    keys = json.loads(logs_server.key_file.read_text())
    secret = keys["inference"]["key"]
    marker = uuid.uuid4().hex[:10]
    with logs_server.client() as c:
        c.register("raising-1.0.mar", initial_workers=1)
        try:
            # the handler writes the server's inference key to its stderr (a careless handler)
            c.predict("raising", {"stderr": f"{marker} key={secret} Bearer {secret}"})
            deadline = time.monotonic() + 20
            while True:
                r = cli(logs_server, "logs", "raising", "--version", "1.0")
                if marker in r.stdout or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert r.returncode == 0, r.stderr
            shown = [line for line in r.stdout.splitlines() if marker in line]
            assert len(shown) == 1 and "W-" in shown[0] and "-stderr" in shown[0]
            assert secret not in r.stdout and shown[0].count("<redacted>") == 2
            # only this model's lines, as many as asked
            assert all("raising" in line or not line.startswith("20") for line in r.stdout.splitlines())
            r = cli(logs_server, "logs", "raising", "-n", "1")
            assert r.returncode == 0 and len(r.stdout.splitlines()) == 1
            r = cli(logs_server, "logs", "no-such-model")
            assert r.returncode == 0 and r.stdout == "" and "no log lines of no-such-model" in r.stderr

            # --follow prints what is written from now on
            follower = subprocess.Popen(
                [TORCHSHIP, "--config", str(logs_server.effective_config_path), "logs", "raising", "--follow"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                time.sleep(1.5)  # the follower has started and read what was there
                later = uuid.uuid4().hex[:10]
                c.predict("raising", {"stderr": f"followed {later}"})
                deadline = time.monotonic() + 30
                seen = ""
                assert follower.stdout is not None
                while later not in seen and time.monotonic() < deadline:
                    seen += follower.stdout.readline()
                assert f"followed {later}" in seen
            finally:
                follower.terminate()
                follower.wait(timeout=10)
        finally:
            c.unregister("raising", "1.0")


def test_logs_without_a_server_is_one_clear_line(tmp_path):
    config = tmp_path / "config.properties"
    config.write_text((ROOT / "config.properties").read_text())
    r = subprocess.run([TORCHSHIP, "--config", str(config), "logs"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("error: no server logs in ") and "torchship serve start" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_cause_written_after_much_output_is_still_named(logs_server, store):
    # TorchServe kills a worker whose load failed at once, and what its reader thread had not read
    # yet is lost: here 100 KB comes before the traceback, so without the wait of the workers'
    # sitecustomize (torchship/ops/worker_site) the cause is missing every time
    archiver.build(ArchiveSpec("chatty", "1.0", FIXTURES / "chatty_failing_handler.py"), store, force=True)
    with logs_server.client() as c:
        try:
            with pytest.raises(E.ServerError) as info:
                c.register("chatty-1.0.mar", initial_workers=1)
            assert info.value.cause is not None, info.value
            assert info.value.cause.line == "RuntimeError: chatty_failing_handler: the last part is missing"
        finally:
            # TorchServe removes a model whose first worker failed when its answer to the registration
            # says so, and otherwise keeps it, retrying the worker: which, depends on timing
            with contextlib.suppress(E.ModelNotFound):
                c.unregister("chatty", "1.0")
