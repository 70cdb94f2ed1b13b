"""Makes a TorchServe worker's last words reach the server's logs (servers torchship starts).

`LocalServer.start` puts this folder on the server's PYTHONPATH, so every Python process the server
starts imports this module first. In a TorchServe worker (`ts/model_service_worker.py`) it adds one
logging handler; everywhere else it does nothing.

Why: TorchServe 0.12.0 kills a worker whose model failed to load the moment the load fails
(WorkerThread, then WorkerLifeCycle.exit: Process.destroyForcibly, which also closes the
frontend's end of the worker's stdout and stderr pipes). What the worker had written that the
frontend's reader thread had not read yet is lost, and that is the traceback that says why: on a
busy two-core machine, one failed load in four left nothing of it in model_log.log, and deploy or
scale could not name the cause.

The handler: after an ERROR record of the worker's own script (a model that failed to load, and
"Backend worker process died.", each with its traceback), the worker waits until the frontend has
read everything it wrote to stdout and stderr (FIONREAD on the pipe: the bytes still unread), at
most two seconds, then goes on to answer or to exit. Records of requests (ts/service.py's
"Prediction error", a handler's own errors) are left alone: they never wait.

A sitecustomize already on the path (the interpreter's own) is still run, after this one.
"""

from __future__ import annotations

import os
import sys
from typing import Any

DRAIN_TIMEOUT_S = 2.0
_WORKER_SCRIPT = "model_service_worker.py"


def unread(fd: int) -> int:
    """The bytes written to pipe `fd` that its reader has not read yet (0 for anything but a pipe)."""
    import fcntl
    import stat
    import struct
    import termios

    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def drain(timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Flush stdout and stderr, then wait until their readers have read them (at most `timeout` s)."""
    import time

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    deadline = time.monotonic() + timeout
    waiting = [fd for fd in (1, 2) if unread(fd)]
    while waiting and time.monotonic() < deadline:
        time.sleep(0.002)
        waiting = [fd for fd in waiting if unread(fd)]


def _install() -> None:
    """In a TorchServe worker: drain after its own ERROR records, once the worker configured logging."""
    import logging

    class Drain(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.ERROR)

        def emit(self, record: logging.LogRecord) -> None:
            if os.path.basename(record.pathname) == _WORKER_SCRIPT:
                drain()

    configure = logging.basicConfig

    def basic_config(**kwargs: Any) -> None:
        # the worker's own basicConfig first (it does nothing once the root logger has a handler),
        # then this handler after its stdout handler
        logging.basicConfig = configure
        configure(**kwargs)
        logging.getLogger().addHandler(Drain())

    logging.basicConfig = basic_config


def _chain() -> None:
    """Run the next sitecustomize on the path, the one this module hides."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if sys.argv and os.path.basename(sys.argv[0]) == _WORKER_SCRIPT:
    _install()
_chain()
