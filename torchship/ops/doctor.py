"""`torchship doctor`: what this machine needs to run a project, what it has, and the one fix for each gap.

Each check is a small function that decides from what it is given (a path, a port, a version) and returns
rows (`Check`): ok, warn (worth knowing, never fails the run), FAIL (the project cannot work until it is
fixed) or skip (does not apply now). `diagnose` runs them all at once for a `Project`, in threads, and an
exception inside one check becomes a FAIL row that names it: the doctor itself never crashes.

Nothing here prints or reads key material: key files are only stat()ed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import psutil

from torchship.ops.deploy import shared_writable  # the rule deploy applies before it registers
from torchship.ops.server import LocalServer, free_ports
from torchship.sdk.config import ProjectPaths, ServerConfig
from torchship.sdk.errors import TorchServeError
from torchship.train.data import (
    ROOT as CHECKOUT,
)  # the checkout: its data/ is what training reads, as fetch_data fills it

if TYPE_CHECKING:
    from torchship.project import Project

__all__ = ["Check", "DoctorReport", "diagnose", "MIN_FREE_BYTES", "MIN_JAVA"]

Status = Literal["ok", "warn", "FAIL", "skip"]
OK: Status = "ok"
WARN: Status = "warn"
FAIL: Status = "FAIL"
SKIP: Status = "skip"

MIN_JAVA = 11  # TorchServe 0.12.0's frontend
MIN_FREE_BYTES = 1 << 30  # below this the next archive or unpacked model may not fit
JAVA_PACKAGE = "default-jre-headless"  # Debian/Ubuntu: Java 17 on Debian 12, 21 on 13; always 11+
CHECK_TIMEOUT = 20.0  # seconds: a check that has not answered by then is a FAIL row
# where a listener's port is set in config.properties, by the name `ServerConfig.listen_addresses` gives it
PORT_KEYS = {
    "inference": "inference_address",
    "management": "management_address",
    "metrics": "metrics_address",
    "grpc_inference": "grpc_inference_port",
    "grpc_management": "grpc_management_port",
}


@dataclass(frozen=True)
class Check:
    """One row of the doctor's report: what was checked, how it stands, what was found, and the fix."""

    check: str
    status: Status
    found: str
    fix: str = ""

    def to_dict(self) -> dict[str, str | None]:
        """Return the row as plain data (for --json)."""
        return {"check": self.check, "status": self.status, "found": self.found, "fix": self.fix or None}


@dataclass(frozen=True)
class DoctorReport:
    """Every row of the doctor, in a fixed order, and how long the checks took.

    `ok` is True when no row is FAIL (warn and skip rows do not count against it).
    """

    checks: list[Check]
    seconds: float

    @property
    def failures(self) -> list[Check]:
        """The FAIL rows."""
        return [c for c in self.checks if c.status == FAIL]

    @property
    def ok(self) -> bool:
        """Whether every row passed (no FAIL; warn and skip rows do not count)."""
        return not self.failures

    def summary(self) -> str:
        """One line under the table: how many rows failed or warned, and what the exit code means."""
        warned = sum(c.status == WARN for c in self.checks)
        notes = f"; {warned} warning(s), which do not fail" if warned else ""
        if self.ok:
            return f"all {len(self.checks)} checks passed{notes} ({self.seconds:.1f} s)"
        return (
            f"{len(self.failures)} of {len(self.checks)} checks FAIL{notes}: run the fix of each FAIL row "
            f"({self.seconds:.1f} s)"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (for --json)."""
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "checks": [c.to_dict() for c in self.checks]}


# ---------------------------------------------------------------- running the checks


def diagnose(project: Project, *, timeout: float = CHECK_TIMEOUT) -> DoctorReport:
    """Run every check for `project` at once and return the rows in a fixed order."""
    started = time.monotonic()
    server = _guarded_value(lambda: server_of(project))
    pid = _guarded_value(server.pid) if server is not None else None
    ts = torchship_command(project)
    jobs: list[tuple[str, Callable[[], list[Check]]]] = [
        ("python", lambda: [check_python(sys.version_info[:3], _requires_python())]),
        ("java", lambda: [check_java(os.environ)]),
        ("pins", lambda: check_pins(_pins(), _installed_version)),
        ("worker python", lambda: [check_worker_python(worker_python(pid))]),
        ("wrk", lambda: [check_wrk(shutil.which("wrk"))]),
        ("config", lambda: [check_config(project.config_path)]),
        ("ports", lambda: _ports(project.config_path, pid)),
        ("server", lambda: [check_server(_found(server), pid, ts)]),
        ("server key file", lambda: [check_server_key_file(_found(server), pid, ts)]),
        ("model store", lambda: [check_store(project.store)]),
        ("disk", lambda: [check_disk(project.store)]),
        ("key folder", lambda: [check_key_folder(project.key_dir)]),
        ("signing key", lambda: [check_signing_key(project.key_dir)]),
        ("model keys", lambda: [check_model_keys(project.key_dir)]),
        ("data", lambda: check_data(_fetch_data())),
    ]
    pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="doctor")
    try:
        futures = [pool.submit(_guarded, name, job) for name, job in jobs]
        done, _ = wait(futures, timeout=timeout)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    rows: list[Check] = []
    for (name, _), future in zip(jobs, futures):
        if future in done:
            rows += future.result()
        else:
            rows.append(Check(name, FAIL, f"the check did not finish within {timeout:.0f} s"))
    return DoctorReport(rows, time.monotonic() - started)


def _guarded(name: str, job: Callable[[], list[Check]]) -> list[Check]:
    """The rows of one check; an exception in it is a FAIL row that says what went wrong."""
    try:
        return job()
    except Exception as exc:  # noqa: BLE001  one broken check must not hide the others
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [Check(name, FAIL, f"the check failed: {reason}", "")]


def _found(server: LocalServer | None) -> LocalServer:
    if server is None:
        raise RuntimeError("the project's server could not be made from its config")
    return server


def _guarded_value(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except Exception:  # noqa: BLE001  the checks that need it say why
        return None


# ---------------------------------------------------------------- what the project is


def server_of(project: Project) -> LocalServer:
    """The local server this project's config belongs to.

    A config inside a server's working folder (the effective config a running server was started
    with, beside its key_file.json, as `--config` may name it) belongs to that server; any other
    config to the project's server in `.torchship/server/`.
    """
    here = project.config_path.parent
    if (here / "key_file.json").exists() or (here / "tmp" / ".model_server.pid").exists():
        return LocalServer(project.config_path, here)
    return project.server


def torchship_command(project: Project) -> str:
    """How to call torchship for this project in a fix: plain where a plain `torchship` finds the same config."""
    if ProjectPaths.find().config_path == project.config_path:
        return "torchship"
    return f"torchship --config {_show(project.config_path)}"


def _ports(config: Path, pid: int | None) -> list[Check]:
    if not config.is_file():
        return [Check("ports", SKIP, "no config to read them from (see the config row)")]
    return check_ports(ServerConfig.load(config), _server_pids(pid))


def _server_pids(pid: int | None) -> set[int]:
    """The server's frontend and its workers: the processes whose ports are the project's own."""
    if pid is None:
        return set()
    try:
        return {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return {pid}


# ---------------------------------------------------------------- Python and packages


def check_python(version: tuple[int, ...], requires: str | None) -> Check:
    """The Python that runs torchship against the distribution's Requires-Python (e.g. ">=3.10")."""
    shown = ".".join(str(v) for v in version[:3])
    minimum = _minimum(requires or "")
    if minimum is None or tuple(version[:2]) >= minimum:
        return Check("python", OK, f"{shown} ({_show(Path(sys.executable))})")
    need = ".".join(map(str, minimum))
    return Check(
        "python",
        FAIL,
        f"{shown}: torchship needs Python {need} or newer",
        f"rm -rf .venv && make setup PYTHON=python{need}",
    )


def _minimum(requires: str) -> tuple[int, ...] | None:
    match = re.search(r">=\s*(\d+(?:\.\d+)*)", requires)
    return tuple(int(x) for x in match.group(1).split(".")) if match else None


def _requires_python() -> str | None:
    try:
        return importlib.metadata.metadata("torchship")["Requires-Python"]
    except importlib.metadata.PackageNotFoundError:
        return None


def _pins() -> dict[str, str]:
    """Every exact pin (`name==version`) among torchship's own dependencies.

    Read from the checkout's pyproject.toml (it may be newer than the installed metadata after a git pull),
    else from the installed distribution's metadata: never written down twice.
    """
    pyproject = CHECKOUT / "pyproject.toml"
    try:
        import tomllib  # Python 3.11+

        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        if data.get("project", {}).get("name") == "torchship":
            return _exact_pins(data["project"].get("dependencies", []))
    except (ImportError, OSError, ValueError, KeyError):
        pass
    return _exact_pins(importlib.metadata.requires("torchship") or [])


def _exact_pins(requirements: Iterable[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*", requirement)
        if match:  # requirements with a marker (an extra) or a range are not pins of the runtime
            pins[match.group(1)] = match.group(2)
    return pins


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _same_version(installed: str, pinned: str) -> bool:
    """PEP 440 `==` for plain release pins: a local label (`+cpu`) and trailing zeros do not count."""

    def release(v: str) -> tuple[str, ...]:
        parts = v.split("+")[0].split(".")
        while len(parts) > 1 and parts[-1] == "0":
            parts.pop()
        return tuple(parts)

    return release(installed) == release(pinned) if "+" not in pinned else installed == pinned


def check_pins(pins: Mapping[str, str], installed: Callable[[str], str | None]) -> list[Check]:
    """One row per pinned dependency (torch, torchserve, torch-model-archiver, ...): installed as pinned."""
    rows = []
    for name, pinned in pins.items():
        have = installed(name)
        fix = f"{_show(Path(sys.executable))} -m pip install '{name}=={pinned}'"
        if have is None:
            rows.append(Check(name, FAIL, f"not installed (pinned =={pinned})", fix))
        elif not _same_version(have, pinned):
            rows.append(Check(name, FAIL, f"{have}, but pyproject.toml pins =={pinned}", fix))
        else:
            rows.append(Check(name, OK, f"{have} (pinned =={pinned})"))
    return rows


def worker_python(pid: int | None) -> str:
    """The Python TorchServe's workers run: the running frontend's `--python`, else the torchserve launcher's."""
    if pid is not None:
        try:
            cmd = psutil.Process(pid).cmdline()
            if "--python" in cmd[:-1]:
                return cmd[cmd.index("--python") + 1]
        except psutil.Error:
            pass
    launcher = shutil.which("torchserve", path=str(Path(sys.executable).parent)) or shutil.which("torchserve")
    if launcher:
        try:
            with open(launcher, "rb") as f:
                first = f.readline(512).decode("utf-8", "replace")
        except OSError:
            first = ""
        if first.startswith("#!"):
            words = first[2:].split()
            if words and Path(words[0]).name == "env" and len(words) > 1:
                return shutil.which(words[1]) or words[1]
            if words:
                return words[0]
    return sys.executable


def check_worker_python(python: str) -> Check:
    """TorchServe's workers need numpy and `ts` (TorchServe's Python side) in the Python they run."""
    code = "import numpy, ts, importlib.metadata as m; print(numpy.__version__, m.version('torchserve'))"
    try:
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("worker python", FAIL, f"{python} does not run: {exc}", "make setup")
    if result.returncode == 0:
        numpy_version, ts_version = (result.stdout.split() + ["?", "?"])[:2]
        return Check("worker python", OK, f"{_show(Path(python))}: numpy {numpy_version}, ts {ts_version}")
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    missing = re.search(r"No module named '([^'.]+)", last)
    if not missing:
        return Check("worker python", FAIL, f"{_show(Path(python))}: {last}", _make("setup"))
    package = {"ts": "torchserve"}.get(missing.group(1), missing.group(1))
    pinned = (_guarded_value(_pins) or {}).get(package)
    spec = f"{package}=={pinned}" if pinned else package
    return Check(
        "worker python", FAIL, f"{_show(Path(python))}: {last}", f"{_show(Path(python))} -m pip install '{spec}'"
    )


# ---------------------------------------------------------------- OS packages


def java_command(env: Mapping[str, str]) -> tuple[str | None, str]:
    """The java TorchServe will run ($JAVA_HOME/bin/java, else java on PATH) and where it was looked for."""
    home = env.get("JAVA_HOME")
    if home:
        return shutil.which("java", path=os.path.join(home, "bin")), f"JAVA_HOME={home}"
    return shutil.which("java", path=env.get("PATH", os.defpath)), "PATH"


def java_major(version_output: str) -> int | None:
    """The major version in `java -version`'s output: 'version "17.0.15"' -> 17, '"1.8.0_292"' -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java(env: Mapping[str, str]) -> Check:
    """Java 11 or newer for TorchServe's frontend, found as `torchship serve start` finds it."""
    java, where = java_command(env)
    fix = "unset JAVA_HOME (or point it at a Java 11+)" if env.get("JAVA_HOME") else _os_fix("java", JAVA_PACKAGE, env)
    if java is None:
        return Check("java", FAIL, f"no java in {where}", fix)
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=15, env={**env, "JAVA_TOOL_OPTIONS": ""}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("java", FAIL, f"{java} does not run: {exc}", fix)
    output = result.stderr + result.stdout
    major = java_major(output)
    first = next((line for line in output.splitlines() if "version" in line), output.strip()[:80])
    shown = re.search(r'version "([^"]+)"', first)
    text = shown.group(1) if shown else first
    if major is None or major < MIN_JAVA:
        return Check("java", FAIL, f"{text} ({java}): TorchServe needs Java {MIN_JAVA}+", fix)
    return Check("java", OK, f"{text} ({java})")


def check_wrk(wrk: str | None, env: Mapping[str, str] | None = None) -> Check:
    """wrk, the C load generator: bench and tune fall back to a slower Python one without it (a warning)."""
    if wrk:
        return Check("wrk", OK, wrk)
    return Check(
        "wrk",
        WARN,
        "not installed: bench and tune use the slower Python load generator",
        _os_fix("wrk", "wrk", env or os.environ),
    )


def _os_fix(need: str, package: str, env: Mapping[str, str]) -> str:
    """The one command that installs an OS package: the checkout's scripts/setup-os.sh when it has one
    (root, sudo or the line to run, as make does), else apt-get, else words."""
    script = CHECKOUT / "scripts" / "setup-os.sh"
    if script.is_file() and need in script.read_text(encoding="utf-8", errors="replace"):
        return f"{_show(script)} {need}"
    if not shutil.which("apt-get", path=env.get("PATH", os.defpath)):
        return f"install {package} (its Debian name) with this system's package manager"
    sudo = "" if os.geteuid() == 0 else "sudo "
    lists = Path("/var/lib/apt/lists")
    update = "" if lists.is_dir() and any(lists.glob("*Packages*")) else f"{sudo}apt-get update && "
    return f"{update}{sudo}apt-get install -y {package}"


# ---------------------------------------------------------------- config, ports, server


def check_config(path: Path) -> Check:
    """The TorchServe config the project's server starts from: present and readable."""
    if not path.is_file():
        shipped = CHECKOUT / "config.properties"  # the secure defaults, in git
        fix = (
            f"git -C {_show(CHECKOUT)} checkout -- config.properties"
            if path == shipped
            else f"cp {_show(shipped)} {_show(path)}"
        )
        return Check("config", FAIL, f"{_show(path)}: not found", fix)
    cfg = ServerConfig.load(path)  # unreadable: the guard makes it a FAIL row with the reason
    return Check("config", OK, f"{_show(cfg.path)} ({len(cfg.properties)} properties)")


def check_ports(cfg: ServerConfig, own: set[int]) -> list[Check]:
    """One row per listener of `cfg` (inference, management, metrics, gRPC).

    A port passes when it is free, or held by `own` (the project's running server, its pids).
    """
    return [check_port(name, host, port, own, cfg) for name, (host, port) in cfg.listen_addresses().items()]


def check_port(name: str, host: str, port: int, own: set[int], cfg: ServerConfig | None = None) -> Check:
    """One listener's port: free (ok), held by the project's own server (ok), or held by another process."""
    row = f"port {name}"
    where = f"{host or '*'}:{port}"
    if _can_bind(host, port):
        return Check(row, OK, f"{where} free")
    holder = listener_pid(port)
    if holder is not None and holder in own:
        return Check(row, OK, f"{where} held by this project's server (pid {holder})")
    who = f"pid {holder} ({_process_name(holder)})" if holder is not None else "another process (not ours to see)"
    key = PORT_KEYS.get(name, f"{name}_address")
    free = free_ports(1)[0]
    if key.endswith("_port"):
        value = str(free)
    else:
        url = cfg.properties.get(key, "") if cfg is not None else ""
        scheme = url.split("://")[0] if "://" in url else "http"
        value = f"{scheme}://{host or '127.0.0.1'}:{free}"
    config = _show(cfg.path) if cfg is not None else "config.properties"
    return Check(row, FAIL, f"{where} held by {who}", f"set {key}={value} in {config} (or stop what holds {port})")


def _can_bind(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as `serve start` tests it: a port in TIME_WAIT is free, a listener is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        except OSError:
            return False
    return True


def listener_pid(port: int) -> int | None:
    """The pid listening on TCP `port`, where this account may see it (None otherwise)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


def _process_name(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
        return "TorchServe" if "org.pytorch.serve.ModelServer" in cmdline else proc.name()
    except psutil.Error:
        return "?"


def check_server(server: LocalServer, pid: int | None, torchship: str = "torchship") -> Check:
    """The project's server: running and answering /ping Healthy."""
    if pid is None:
        return Check(
            "server", FAIL, f"not running (working folder {_show(server.workdir)})", f"{torchship} serve start"
        )
    client = server.client(retries=0, timeout=3)
    try:
        health = client.ping()
    except TorchServeError as exc:
        health = str(exc).splitlines()[0]
    finally:
        client.close()
    url = server.config().inference_url
    if health == "Healthy":
        return Check("server", OK, f"Healthy (pid {pid}, {url})")
    restart = f"{torchship} serve stop && {torchship} serve start"
    return Check("server", FAIL, f"running (pid {pid}) but /ping says: {health}", restart)


def check_server_key_file(server: LocalServer, pid: int | None, torchship: str = "torchship") -> Check:
    """The running server's token file (key_file.json): there, and 0600 (only this account reads it)."""
    row = "server key file"
    if pid is None:
        return Check(row, SKIP, "server not running (TorchServe writes it at start)")
    if (server.config().get("disable_token_authorization") or "").lower() == "true":
        return Check(row, WARN, "token auth is off in the config: anyone on this machine may call the server")
    return check_private_file(
        row,
        server.key_file,
        missing="missing though the server runs",
        fix_missing=f"{torchship} serve stop && {torchship} serve start",
    )


# ---------------------------------------------------------------- files and their modes


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def check_private_file(row: str, path: Path, *, missing: str, fix_missing: str, missing_status: Status = FAIL) -> Check:
    """A secret file: a regular file that no other account may read or write (0600 or tighter)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return Check(row, missing_status, f"{_show(path)}: {missing}", fix_missing)
    if not stat.S_ISREG(st.st_mode):
        return Check(row, FAIL, f"{_show(path)} is not a regular file", f"rm -r {_show(path)}")
    if st.st_mode & 0o077:
        return Check(
            row,
            FAIL,
            f"{_show(path)} is {_mode(st)}: other accounts may read or change it",
            f"chmod 600 {_show(path)}",
        )
    if st.st_uid != os.geteuid():
        return Check(row, WARN, f"{_show(path)} is {_mode(st)} but owned by uid {st.st_uid}, not this account")
    return Check(row, OK, f"{_show(path)} {_mode(st)}")


def check_signing_key(key_dir: Path) -> Check:
    """The project's signing private key: 0600 when present; absent is a warning (the first package makes it)."""
    from torchship.archiver.signing import PRIVATE_NAME

    make = (
        f"{_show(Path(sys.executable))} -c \"from torchship import archiver; archiver.ensure_keys('{_show(key_dir)}')\""
    )
    return check_private_file(
        "signing key",
        key_dir / PRIVATE_NAME,
        missing="none yet (the first `torchship package` makes it)",
        fix_missing=make,
        missing_status=WARN,
    )


def check_model_keys(key_dir: Path) -> Check:
    """The model keyring of encrypted archives: 0600 when present; absent is fine (made by `package --encrypt`)."""
    from torchship.archiver import keyring_path

    path = keyring_path(key_dir)
    if not path.exists():
        return Check("model keys", SKIP, f"{_show(path)}: none (made by the first `torchship package --encrypt`)")
    return check_private_file("model keys", path, missing="gone", fix_missing="")


def check_key_folder(key_dir: Path) -> Check:
    """The signing keys' folder: writable by this account only (else someone could swap the key pair)."""
    row = "key folder"
    try:
        st = key_dir.stat()
    except FileNotFoundError:
        return Check(row, SKIP, f"{_show(key_dir)}: none yet (the first `torchship package` makes it, 0700)")
    if not stat.S_ISDIR(st.st_mode):
        return Check(row, FAIL, f"{_show(key_dir)} is not a folder", f"rm {_show(key_dir)}")
    if st.st_mode & 0o022:
        return Check(
            row,
            FAIL,
            f"{_show(key_dir)} is {_mode(st)}: other accounts may replace the keys in it",
            f"chmod 700 {_show(key_dir)}",
        )
    return Check(row, OK, f"{_show(key_dir)} {_mode(st)}")


def check_store(store: Path) -> Check:
    """The model store and its archives: none writable by every account (deploy refuses those)."""
    row = "model store"
    try:
        st = store.stat()
    except FileNotFoundError:
        return Check(row, OK, f"{_show(store)}: not made yet (serve start and package make it)")
    if not stat.S_ISDIR(st.st_mode):
        return Check(row, FAIL, f"{_show(store)} is not a folder", f"rm {_show(store)}")
    archives = sorted(store.glob("*.mar"))
    bad = [p for p in [store, *archives] if shared_writable(p.stat())]
    if bad:
        names = ", ".join(p.name for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        targets = " ".join(_show(p) for p in bad) if len(bad) <= 3 else f"{_show(store)} {_show(store)}/*.mar"
        return Check(row, FAIL, f"writable by every account: {names} (deploy refuses them)", f"chmod o-w {targets}")
    return Check(row, OK, f"{_show(store)} {_mode(st)}, {len(archives)} archive(s)")


def check_disk(store: Path, minimum: int = MIN_FREE_BYTES) -> Check:
    """Free space on the disk of the model store (archives, and what TorchServe unpacks)."""
    folder = store
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    found = f"{_size(free)} free at {_show(folder)}"
    if free < minimum:
        return Check(
            "disk",
            FAIL,
            f"{found}: under {_size(minimum)}",
            f"free at least {_size(minimum)} on that disk (du -sh {_show(folder)}/* shows what is there)",
        )
    return Check("disk", OK, found)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# ---------------------------------------------------------------- data


@functools.cache
def _fetch_data() -> ModuleType | None:
    """scripts/fetch_data.py of the checkout: its tables (files and sha256) and its `present` are the truth."""
    path = CHECKOUT / "scripts" / "fetch_data.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("torchship_fetch_data", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_data(fetch: Any) -> list[Check]:
    """One row per example data set of `scripts/fetch_data.py` (`fetch`): every file there with its sha256.

    The KServe schema wheel only the tests use is a warning when missing.
    """
    if fetch is None:
        return [Check("data", SKIP, f"no scripts/fetch_data.py in {_show(CHECKOUT)}: not a checkout")]
    data = Path(fetch.DATA)
    make_data = _make("data")
    rows = {
        name: _data_row(name, data / name, fetch.present(data / name, files), len(files), make_data)
        for name, (_, _, files) in fetch.WHEELS.items()
    }
    fashion_ok = fetch.present(data / "fashion", fetch.FASHION)
    fix = make_data
    if not fashion_ok and not all((Path(fetch.FASHION_DEBIAN) / n).is_file() for n in fetch.FASHION):
        if not (CHECKOUT / "scripts" / "setup-os.sh").is_file():  # where it is, make data installs the package
            fix = f"{_os_fix('fashion-mnist', 'dataset-fashion-mnist', os.environ)} && {make_data}"
    rows["fashion"] = _data_row("fashion", data / "fashion", fashion_ok, len(fetch.FASHION), fix)
    _, wheel_name, digest = fetch.SCHEMAS
    wheel = data / ".cache" / wheel_name
    if wheel.is_file() and fetch.sha256(wheel) == digest:
        rows["schemas"] = Check("data schemas", OK, f"{_show(wheel)} (sha256 checked; the tests' KServe models)")
    else:
        rows["schemas"] = Check(
            "data schemas", WARN, f"{_show(wheel)}: missing or changed (only the tests use it)", make_data
        )
    order = ["sentiment", "fashion", "recommender", "embedder"]  # as the design lists them
    return [rows[n] for n in order if n in rows] + [r for n, r in rows.items() if n not in order]


def _data_row(name: str, folder: Path, present: bool, count: int, fix: str) -> Check:
    if present:
        return Check(f"data {name}", OK, f"{_show(folder)} ({count} file(s), sha256 checked)")
    return Check(f"data {name}", FAIL, f"{_show(folder)}: missing or changed", fix)


def _make(target: str) -> str:
    here = Path.cwd().resolve()
    return f"make {target}" if here == CHECKOUT else f"make -C {_show(CHECKOUT)} {target}"


# ---------------------------------------------------------------- display


def _show(path: Path) -> str:
    """A path as a person types it: relative to the current folder when below it (links kept as they are)."""
    absolute = os.path.abspath(path)
    try:
        here = os.getcwd()
    except OSError:
        return absolute
    if absolute == here or not absolute.startswith(here.rstrip(os.sep) + os.sep):
        return absolute
    return os.path.relpath(absolute, here)
