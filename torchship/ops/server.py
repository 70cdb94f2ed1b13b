"""A local TorchServe that torchship owns: start, stop and status.

Each server runs in its own working folder (key file, logs, effective config) with its own TMPDIR
(pid file, worker sockets), so several can run on one host without stopping each other.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from torchship.sdk.client import TorchServe
from torchship.sdk.config import (
    ServerConfig,
    java_regex_literal,
    missing_config_message,
    read_properties,
    write_properties,
)
from torchship.sdk.errors import ConfigError, ServerStartError, TorchServeError
from torchship.sdk.logs import ServerLogs

__all__ = ["LocalServer", "ServerStatus", "free_ports", "free_port_overrides"]

_JAVA_MAIN = "org.pytorch.serve.ModelServer"
# Environment variables that must never reach a worker: this one silently re-enables
# pickle code execution in torch.load.
_FORBIDDEN_ENV = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)
# where the workers find the model keyring (handlers/torchship_crypto.py KEYRING_ENV)
MODEL_KEYS_ENV = "TORCHSHIP_MODEL_KEYS"
CAPTURE_ENV = "TORCHSHIP_CAPTURE_DIR"  # torchship_capture.CAPTURE_ENV
# a unix socket's path holds 107 bytes; TorchServe puts each worker's at TMPDIR/.ts.sock.<port>
SOCKET_PATH_MAX = 107
WORKER_SOCKET_LONGEST = ".ts.sock.65535"
# put on the server's PYTHONPATH: its sitecustomize waits, in a worker that logs an error, until the
# frontend has read the worker's output (see the module)
WORKER_SITE = Path(__file__).resolve().parent / "worker_site"
# TorchServe's logging when no log4j2.xml sits beside the config (torchship/templates/)
_PACKAGED_LOG_CONFIG = Path(__file__).resolve().parents[1] / "templates" / "log4j2.xml"


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports that were free a moment ago (all held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _refuse_shared_keyring(path: Path) -> None:
    """Hand the workers a keyring only while no other account can read or swap it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # made at the first `torchship package --encrypt`; the workers read it at load
    if st.st_mode & 0o077 or st.st_uid != os.getuid():
        raise ServerStartError(
            f"{path} (the model keys of encrypted archives) is readable or writable by other accounts, or "
            f"not this account's: chmod 600 {path} (and chown it), then start again"
        )


def free_port_overrides() -> dict[str, str]:
    """Return config overrides that put every listener of a LocalServer on free loopback ports.

    For a second server beside another (tests, benchmarks).
    """
    inf, man, met, gi, gm = free_ports(5)
    return {
        "inference_address": f"http://127.0.0.1:{inf}",
        "management_address": f"http://127.0.0.1:{man}",
        "metrics_address": f"http://127.0.0.1:{met}",
        "grpc_inference_port": str(gi),
        "grpc_management_port": str(gm),
    }


@dataclass(frozen=True)
class ServerStatus:
    """Whether a local server runs and is healthy, its pid and addresses, and a short detail."""

    running: bool
    healthy: bool
    pid: int | None
    inference_url: str
    management_url: str
    metrics_url: str
    workdir: Path
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the status as plain data (paths as text)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


class LocalServer:
    """A TorchServe started from `config_path`, running in `workdir`.

    `overrides` replace properties of the config (tests use them for free ports and short token
    lifetimes). The effective config is written to `workdir/config.properties`, with the model
    store made absolute and allowed_urls narrowed to it. `model_keys`: the keyring of encrypted
    archives' model keys (the project's `.torchship/keys/model-keys.json`); its path reaches the
    workers as $TORCHSHIP_MODEL_KEYS (a path, never a key), and the file may be made later.
    `capture_dir`: where the workers write sampled requests once a version's capture is turned on
    (torchship.ops.capture; the project's `.torchship/capture`, default `workdir/capture`), as
    $TORCHSHIP_CAPTURE_DIR.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *,
        model_store: str | os.PathLike[str] | None = None,
        overrides: dict[str, str] | None = None,
        model_keys: str | os.PathLike[str] | None = None,
        capture_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config_path = Path(config_path).resolve()
        self.workdir = Path(workdir).resolve()
        self._model_store = Path(model_store).resolve() if model_store else None
        self.overrides = dict(overrides or {})
        self.model_keys = Path(model_keys).resolve() if model_keys else None
        self.capture_dir = Path(capture_dir).resolve() if capture_dir else self.workdir / "capture"

    # ------------------------------------------------------------------ paths

    @property
    def tmpdir(self) -> Path:
        """The server's TMPDIR (pid file, worker sockets, unpacked archives).

        `tmp/` in the working folder, unless a worker's socket path there (`.ts.sock.<port>`) would
        not fit in a unix socket address (107 bytes): a project deep in the file system would fail
        every register with "AF_UNIX path too long". Then it is a private folder (0700, this
        account's) in /tmp, named after the working folder, so every command finds the same one.
        """
        here = self.workdir / "tmp"
        if len(os.fsencode(here / WORKER_SOCKET_LONGEST)) <= SOCKET_PATH_MAX:
            return here
        digest = hashlib.sha256(os.fsencode(self.workdir)).hexdigest()[:16]
        return Path("/tmp") / f"torchship-{os.getuid()}-{digest}"

    def _make_tmpdir(self) -> None:
        """Create TMPDIR; one outside the working folder must be a private folder of this account."""
        if self.tmpdir.parent == self.workdir:
            self.tmpdir.mkdir(parents=True, exist_ok=True)
            return
        try:
            self.tmpdir.mkdir(mode=0o700)
        except FileExistsError:
            pass
        st = self.tmpdir.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ServerStartError(
                f"{self.tmpdir} (the server's TMPDIR: the working folder's path is too long for its "
                "worker sockets) is not a private folder of this account: remove it, or move the project "
                "to a shorter path"
            )

    @property
    def pid_file(self) -> Path:
        """The pid file TorchServe writes into its TMPDIR."""
        return self.tmpdir / ".model_server.pid"

    @property
    def key_file(self) -> Path:
        """The token key file TorchServe writes into its working folder at start."""
        return self.workdir / "key_file.json"

    @property
    def effective_config_path(self) -> Path:
        """Where the config the server runs with is written."""
        return self.workdir / "config.properties"

    @property
    def log_dir(self) -> Path:
        """The server's log folder."""
        return self.workdir / "logs"

    @property
    def logs(self) -> ServerLogs:
        """The server's log files, read (`torchship logs`; why a worker failed)."""
        return ServerLogs(self.log_dir, key_file=self.key_file)

    @property
    def console_log(self) -> Path:
        """The file the server's console output goes to."""
        return self.log_dir / "console.log"

    def config(self) -> ServerConfig:
        """The config this server runs with (the effective one once written)."""
        if self.effective_config_path.exists():
            return ServerConfig.load(self.effective_config_path)
        return ServerConfig(self.config_path, self._effective_properties())

    def _effective_properties(self) -> dict[str, str]:
        if not self.config_path.is_file():
            raise ConfigError(missing_config_message(self.config_path))
        props = read_properties(self.config_path)
        props.update(self.overrides)
        store = self._model_store or ServerConfig(self.config_path, props).model_store
        props["model_store"] = str(store)
        # Only archives of the local store, by file name or file:// URL; nothing remote.
        props["allowed_urls"] = "file://" + java_regex_literal(str(store) + "/") + "[^/]+\\.mar"
        return props

    def write_config(self) -> ServerConfig:
        """Write the effective config (overrides applied, store absolute, allowed_urls narrowed) and load it."""
        props = self._effective_properties()
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_properties(
            self.effective_config_path,
            props,
            header=f"Written by `torchship serve start` from {self.config_path}; edit that file instead.",
        )
        return ServerConfig.load(self.effective_config_path)

    def client(self, **kwargs: Any) -> TorchServe:
        """Return a client for this server (its addresses and key file); keywords go to `TorchServe`."""
        cfg = self.config()
        kwargs.setdefault("max_request_size", cfg.max_request_size)
        kwargs.setdefault("logs", self.logs)
        return TorchServe(cfg.management_url, cfg.inference_url, cfg.metrics_url, self.key_file, **kwargs)

    # ------------------------------------------------------------------ process

    def pid(self) -> int | None:
        """The frontend's pid, if this server is running; a stale pid file is removed."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and _JAVA_MAIN in " ".join(proc.cmdline()):
                return pid
        except psutil.Error:
            pass
        self.pid_file.unlink(missing_ok=True)
        return None

    def is_running(self) -> bool:
        """Whether the server's frontend process is running."""
        return self.pid() is not None

    def start(self, *, timeout: float = 90.0) -> bool:
        """Start the server and wait until /ping answers Healthy. False if it was already running."""
        if self.is_running():
            return False
        _check_java()
        cfg = self.write_config()
        cfg.model_store.mkdir(parents=True, exist_ok=True)
        self._make_tmpdir()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _check_ports_free(cfg)
        self.key_file.unlink(missing_ok=True)

        env = {k: v for k, v in os.environ.items() if k not in _FORBIDDEN_ENV}
        env.update(TMPDIR=str(self.tmpdir), TEMP=str(self.tmpdir), TMP=str(self.tmpdir))
        if self.model_keys is not None:
            _refuse_shared_keyring(self.model_keys)
            env[MODEL_KEYS_ENV] = str(self.model_keys)  # the workers inherit the frontend's environment
        env[CAPTURE_ENV] = str(self.capture_dir)
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        # the workers' last words reach model_log.log even when TorchServe kills them at once
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(WORKER_SITE), env.get("PYTHONPATH")]))
        cmd = [
            _torchserve_executable(),
            "--start",
            "--ncs",
            "--ts-config",
            str(cfg.path),
            "--model-store",
            str(cfg.model_store),
        ]
        # quiet logging that keeps worker tracebacks (see the file): the project's own, beside its
        # config, else the one torchship ships (the template `torchship init` copies)
        log_config = self.config_path.parent / "log4j2.xml"
        if not log_config.is_file():
            log_config = _PACKAGED_LOG_CONFIG
        cmd += ["--log-config", str(log_config)]
        with open(self.console_log, "ab") as log:
            launcher = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            launcher.wait(timeout=60)
        try:
            self._wait_healthy(timeout)
        except ServerStartError:
            self.stop()
            raise
        return True

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(retries=0, timeout=5)
        try:
            while time.monotonic() < deadline:
                if self.pid() is None:
                    raise ServerStartError("TorchServe exited during start-up:\n" + self.log_tail())
                if self.key_file.exists():
                    try:
                        # /ping answers a second or two before the gRPC listeners open: a server is
                        # started when every listener of its config accepts connections
                        if client.ping() == "Healthy" and self._all_listening():
                            return
                    except TorchServeError:
                        pass
                time.sleep(0.2)
        finally:
            client.close()
        raise ServerStartError(f"TorchServe did not answer /ping Healthy within {timeout:.0f} s:\n" + self.log_tail())

    def _all_listening(self) -> bool:
        import socket

        for host, port in self.config().listen_addresses().values():
            try:
                with socket.create_connection((host if host not in ("", "0.0.0.0") else "127.0.0.1", port), timeout=1):
                    pass
            except OSError:
                return False
        return True

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop the server and its workers, and wait until they are gone. False if not running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            proc = psutil.Process(pid)
            children = proc.children(recursive=True)
            proc.terminate()
            _, alive = psutil.wait_procs([proc], timeout=timeout)
            for p in alive:
                p.kill()
            _, alive = psutil.wait_procs(children, timeout=10)
            for p in alive:
                p.kill()
        except psutil.NoSuchProcess:
            pass
        self.pid_file.unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)
        return True

    def status(self) -> ServerStatus:
        """Return the server's status: running, healthy (it answers /ping), pid and addresses."""
        cfg = self.config()
        pid = self.pid()
        healthy, detail = False, "not running"
        if pid is not None:
            client = self.client(retries=0, timeout=5)
            try:
                detail = client.ping()
                healthy = detail == "Healthy"
            except TorchServeError as exc:
                detail = str(exc)
            finally:
                client.close()
        return ServerStatus(
            pid is not None, healthy, pid, cfg.inference_url, cfg.management_url, cfg.metrics_url, self.workdir, detail
        )

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the console log: where start-up errors show."""
        try:
            text = self.console_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])


def _torchserve_executable() -> str:
    beside = Path(sys.executable).parent / "torchserve"
    if beside.exists():
        return str(beside)
    found = shutil.which("torchserve")
    if not found:
        raise ServerStartError("torchserve is not installed in this environment: pip install torchserve==0.12.0")
    return found


def _check_java() -> None:
    java = (
        shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin"))
        if os.environ.get("JAVA_HOME")
        else shutil.which("java")
    )
    if not java:
        raise ServerStartError(
            "TorchServe needs Java 11 or newer and none was found: "
            "install a JRE (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )


def _check_ports_free(cfg: ServerConfig) -> None:
    for name, (host, port) in cfg.listen_addresses().items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            # SO_REUSEADDR: a port in TIME_WAIT after the last server is free; a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                raise ServerStartError(
                    f"{name} port {host}:{port} is already in use: another server runs "
                    f"there; stop it or change the port in {cfg.path.name}"
                ) from None
