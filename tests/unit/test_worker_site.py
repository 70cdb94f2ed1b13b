"""The sitecustomize a local server's workers import (torchship/ops/worker_site): in a TorchServe
worker, an error of the worker's own script waits until the frontend has read the worker's output
(TorchServe kills a worker whose load failed at once, and what it had not read is lost); request
errors never wait; any other process is left as it was, and the interpreter's own sitecustomize
still runs. The real server's side: tests/integration/test_worker_failures.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from torchship.ops.server import WORKER_SITE

sys.path.insert(0, str(WORKER_SITE))
try:
    import sitecustomize as worker_site  # the module under test, not the interpreter's
finally:
    sys.path.remove(str(WORKER_SITE))
    sys.modules.pop("sitecustomize", None)

# a TorchServe worker in miniature: logging configured as ts/model_service_worker.py does, a
# request error from another module (ts/service.py's "Prediction error"), then the worker's own
WORKER = """
import json, logging, sys, time
import service
logging.basicConfig(stream=sys.stdout, format="%(message)s", level=logging.INFO)
seen = {"handlers": [type(h).__name__ for h in logging.getLogger().handlers]}
start = time.monotonic()
service.fail()
seen["request_error_s"] = time.monotonic() - start
start = time.monotonic()
logging.error("Backend worker process died.")
seen["own_error_s"] = time.monotonic() - start
sys.stderr.write(json.dumps(seen))
"""
SERVICE = "import logging\n\ndef fail():\n    logging.getLogger('ts.service').error('Prediction error')\n"


def env_with(*paths: Path | str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    return env


def test_unread_counts_what_a_pipe_holds_and_nothing_else(tmp_path):
    r, w = os.pipe()
    try:
        os.write(w, b"twelve bytes")
        assert worker_site.unread(w) == 12
        os.read(r, 5)
        assert worker_site.unread(w) == 7
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "f", "wb") as f:
        f.write(b"a file is not a pipe")
        assert worker_site.unread(f.fileno()) == 0


def test_drain_waits_for_the_reader_and_no_longer_than_its_timeout(monkeypatch):
    r, w = os.pipe()
    saved = os.dup(1)
    try:
        os.dup2(w, 1)  # this process's stdout is the pipe, as a worker's is
        os.write(1, b"the traceback that says why\n")
        read: list[bytes] = []
        reader = threading.Timer(0.3, lambda: read.append(os.read(r, 1024)))
        reader.start()
        start = time.monotonic()
        worker_site.drain(timeout=10)
        waited = time.monotonic() - start
        reader.join()
        assert read == [b"the traceback that says why\n"]
        assert 0.29 <= waited < 10  # it went on once the pipe was read, not at its timeout

        os.write(1, b"nobody reads this\n")
        start = time.monotonic()
        worker_site.drain(timeout=0.2)
        assert time.monotonic() - start >= 0.2  # unread: it waited its whole timeout, then went on
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(r)
        os.close(w)


def test_a_worker_waits_after_its_own_errors_only(tmp_path):
    folder = tmp_path / "ts"
    folder.mkdir()
    (folder / "model_service_worker.py").write_text(WORKER)
    (folder / "service.py").write_text(SERVICE)
    r, w = os.pipe()  # the worker's stdout: a pipe nobody reads, a frontend that has fallen behind
    try:
        done = subprocess.run(
            [sys.executable, str(folder / "model_service_worker.py")],
            stdout=w,
            stderr=subprocess.PIPE,
            env=env_with(WORKER_SITE, folder),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stderr)
        assert seen["handlers"] == ["StreamHandler", "Drain"]  # after the worker's own stdout handler
        assert seen["request_error_s"] < worker_site.DRAIN_TIMEOUT_S / 2  # a request's error never waits
        assert seen["own_error_s"] >= worker_site.DRAIN_TIMEOUT_S  # its own: until read, or the timeout
        os.close(w)
        w = -1
        assert os.read(r, 1 << 16) == b"Prediction error\nBackend worker process died.\n"  # nothing lost
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_other_processes_are_left_alone_and_the_next_sitecustomize_still_runs(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE'] = 'ran'\n")
    probe = (
        "import logging, os, sys; "
        "print(os.environ.get('OTHER_SITECUSTOMIZE'), logging.basicConfig.__module__, "
        "'fcntl' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env_with(WORKER_SITE, other), timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ran", "logging", "False"]  # chained; logging untouched; nothing imported
