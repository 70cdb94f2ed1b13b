"""The gateway that torchship owns: nginx in front of a local TorchServe's inference API.

It is started, reloaded and stopped here, with a keeper process that follows TorchServe's inference
token.

Everything lives in the gateway's working folder (`.torchship/gateway/` beside the server's
`.torchship/server/`): nginx.conf, the two 0600 includes (tenant keys, TorchServe's token), the
tenants, nginx's pid file, logs (a JSON access log per request) and temp folders; the certificates in
`.torchship/tls/`. nginx (Debian's /usr/sbin/nginx, or $TORCHSHIP_NGINX) runs as its own master with
`-p <folder> -c <folder>/nginx.conf -e <folder>/logs/error.log`: no system-wide file is read or written.

`state.json` says that a gateway runs for this server, where, and with which CA and key:
`TorchServe.from_config` reads it (torchship.sdk.config.GatewayInfo) and goes through the gateway.

TorchServe's inference token expires (token_expiration_min) and is replaced when anyone rotates it; nginx
sends it upstream from its config, so the keeper (`python -m torchship.gateway.keeper`) rotates it
before it expires and reloads nginx whenever the key file holds another one (`sync_token`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from torchship.ops.server import LocalServer
from torchship.sdk.auth import KeyFile
from torchship.sdk.config import GATEWAY_STATE_FILE, ServerConfig
from torchship.sdk.errors import ConfigError, ServerStartError, TorchServeError

from .files import locked, write_file
from .nginx import (
    GatewaySpec,
    Limits,
    Listen,
    Split,
    Upstream,
    UpstreamServer,
    default_worker_processes,
    render_conf,
    render_upstream_token,
)
from .tenants import Rate, Tenant, TenantStore
from .tls import Certificates, local_certificates, own_certificates, server_names
from .usage import Tally, TenantUsage, summarize

__all__ = ["Gateway", "GatewayStatus", "DEFAULT_LISTEN", "nginx_executable"]

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_METRICS_LISTEN = "127.0.0.1:8444"  # per-tenant counters, plain HTTP, loopback only
NGINX_ENV = "TORCHSHIP_NGINX"
KEEPER_MODULE = "torchship.gateway.keeper"
ACCESS_LOG_MAX_BYTES = 64 * 1024 * 1024  # then it becomes access.log.1 (one generation kept)


def nginx_executable() -> str:
    """nginx: $TORCHSHIP_NGINX, else on PATH, else Debian's /usr/sbin/nginx; ServerStartError when none."""
    named = os.environ.get(NGINX_ENV)
    found = named or shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found or not os.access(found, os.X_OK):
        raise ServerStartError(
            "the TLS gateway needs nginx and none was found: apt-get install nginx (scripts/setup-os.sh nginx "
            f"does it), or set {NGINX_ENV} to an nginx binary"
        )
    return found


@dataclass(frozen=True)
class GatewayStatus:
    """Whether the gateway runs, where, its nginx and keeper pids, the CA clients pin, and its tenants."""

    running: bool
    pid: int | None
    url: str | None
    listen: list[str]
    ca_file: str | None
    keeper_pid: int | None
    tenants: int
    workdir: Path
    detail: str = ""
    metrics_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the status as plain data (paths as text)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


class Gateway:
    """The TLS gateway of a `LocalServer` (nginx, torchship's config, tenants, keeper).

    Args:
        server: the TorchServe it fronts (its inference address, key file and max_request_size).
        workdir: the gateway's working folder (default: `gateway/` beside the server's working folder).
        tls_dir: the local CA and server certificate (default: `tls/` beside the server's working folder).
    """

    def __init__(self, server: LocalServer, workdir: Path | None = None, tls_dir: Path | None = None) -> None:
        self.server = server
        self.workdir = Path(workdir or server.workdir.parent / "gateway").resolve()
        self.tls_dir = Path(tls_dir or server.workdir.parent / "tls").resolve()
        self.tenants = TenantStore(self.workdir)
        self._tally: Tally | None = None  # the keeper's running count of the access log
        self.metrics_text = ""  # its Prometheus text, which the keeper serves on the metrics listener

    def __repr__(self) -> str:
        return f"Gateway({str(self.workdir)!r})"

    # ------------------------------------------------------------------ paths

    @property
    def conf_path(self) -> Path:
        """The nginx.conf torchship writes."""
        return self.workdir / "nginx.conf"

    @property
    def state_path(self) -> Path:
        """`state.json`: where the gateway listens, its CA and key (written at start, removed at stop)."""
        return self.workdir / GATEWAY_STATE_FILE

    @property
    def pid_file(self) -> Path:
        """The nginx master's pid file."""
        return self.workdir / "nginx.pid"

    @property
    def keeper_pid_file(self) -> Path:
        """The keeper's pid file."""
        return self.workdir / "keeper.pid"

    @property
    def log_dir(self) -> Path:
        """nginx's error log, the JSON access log and the keeper's log."""
        return self.workdir / "logs"

    @property
    def access_log(self) -> Path:
        """One JSON line per request: tenant, status, path, times."""
        return self.log_dir / "access.log"

    @property
    def splits_path(self) -> Path:
        """`rollouts.json`: the live rollouts the gateway splits traffic for (torchship rollout --live)."""
        return self.workdir / "rollouts.json"

    # ------------------------------------------------------------------ state

    def splits(self) -> tuple[Split, ...]:
        """The live rollouts in effect (none when the file is missing)."""
        try:
            raw = json.loads(self.splits_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.splits_path}: {exc}") from None
        try:
            return tuple(
                Split(
                    str(r["model"]), str(r["version"]), float(r["canary"]), float(r["shadow"]), int(r.get("owner", 0))
                )
                for r in raw
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.splits_path} is not a list of live rollouts: {exc}") from None

    def set_split(
        self, split: Split | None, *, model: str | None = None, version: str | None = None, timeout: float = 15.0
    ) -> bool:
        """Start (`split`) or end (None: `model`'s, of `version` when given) a live rollout's traffic split.

        Effective when this returns; False when the gateway is not running (nothing is changed then). A
        model has one live rollout at a time: a split of another version of it is refused."""
        name = split.model if split is not None else model
        with locked(self.workdir):
            if not self.is_running():
                return False
            before = list(self.splits())
            others = [sp for sp in before if sp.model == name and split is not None and sp.version != split.version]
            if others:
                raise ConfigError(
                    f"{name} is in a live rollout of {others[0].version} already (pid {others[0].owner}): one at a time"
                )
            if split is None:
                kept = [sp for sp in before if not (sp.model == name and version in (None, sp.version))]
            else:
                kept = [sp for sp in before if sp.model != name] + [split]
            self._write_splits(kept)
            try:
                return self._reload(self._server_token(), timeout)
            except BaseException:
                # nginx may have loaded the new config before the failure (an interrupt while waiting for its
                # workers): the file and nginx go back to what was in effect
                self._write_splits(before)
                with contextlib.suppress(Exception):
                    self._reload(self._server_token(), timeout)
                raise

    def end_orphan_splits(self) -> list[Split]:
        """End the live rollouts whose command is gone (killed before it could end its split); which ended."""
        orphans = [sp for sp in self.splits() if sp.owner and not psutil.pid_exists(sp.owner)]
        for sp in orphans:
            self.set_split(None, model=sp.model, version=sp.version)
        return orphans

    def _write_splits(self, splits: list[Split]) -> None:
        rows = [
            {"model": sp.model, "version": sp.version, "canary": sp.canary, "shadow": sp.shadow, "owner": sp.owner}
            for sp in splits
        ]
        write_file(self.splits_path, json.dumps(rows, indent=2) + "\n")

    def state(self) -> dict[str, Any] | None:
        """The state file's content, or None when there is none."""
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.state_path}: {exc}") from None
        return raw if isinstance(raw, dict) else None

    def spec(self, *, listen: list[Listen] | None = None, certificates: Certificates | None = None) -> GatewaySpec:
        """The spec nginx.conf is rendered from.

        The listeners and certificates (given, else the state file's), the server's inference address and
        limits, and the tenants that have a key.
        """
        state = self.state() or {}
        if listen is None:
            listen = [Listen.parse(text) for text in state.get("listen", [DEFAULT_LISTEN])]
        if certificates is None:
            if not state.get("cert"):
                raise ConfigError(f"no gateway was started from {self.workdir}: torchship serve start --tls")
            ca = state.get("ca_file")
            certificates = Certificates(Path(state["cert"]), Path(state["key"]), Path(ca) if ca else None)
        cfg = self.server.config()
        if not cfg.inference_url.startswith("http://"):
            raise ConfigError(
                f"the gateway fronts TorchServe's plain-HTTP loopback inference address, not {cfg.inference_url}"
            )
        host, port = cfg.listen_addresses()["inference"]
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        keys = self.tenants.secrets()
        return GatewaySpec(
            workdir=self.workdir,
            listen=tuple(listen),
            certificates=certificates,
            upstream=Upstream("torchserve", (UpstreamServer(host, port),)),
            tenants=tuple(t for t in self.tenants.all() if t.name in keys),
            limits=_limits(cfg),
            worker_processes=default_worker_processes(),
            splits=self.splits(),
        )

    # ------------------------------------------------------------------ processes

    def pid(self) -> int | None:
        """The nginx master's pid while this gateway runs (a stale pid file is removed)."""
        pid = _read_pid(self.pid_file)
        if pid is not None and _is_process(pid, "nginx: master process", str(self.conf_path)):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def keeper_pid(self) -> int | None:
        """The keeper's pid while it runs."""
        pid = _read_pid(self.keeper_pid_file)
        if pid is not None and _is_process(pid, KEEPER_MODULE, str(self.workdir)):
            return pid
        return None

    def is_running(self) -> bool:
        """Whether this gateway's nginx runs."""
        return self.pid() is not None

    def start(
        self,
        *,
        listen: str | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        metrics_listen: str | None = None,
        timeout: float = 15.0,
    ) -> bool:
        """Start nginx in front of the running server, and the keeper; False if the gateway already runs.

        `listen`: HOST:PORT (default 127.0.0.1:8443). `cert`/`key`: the user's own PEM certificate and
        key, else the project's local CA issues one (`.torchship/tls/`). `metrics_listen`: where the per-tenant
        counters are served for Prometheus, loopback only (default 127.0.0.1:8444).
        """
        if (cert is None) != (key is None):
            raise ConfigError("give both --cert and --key (a PEM certificate and its private key), or neither")
        metrics_where = Listen.parse(metrics_listen or DEFAULT_METRICS_LISTEN)
        if not metrics_where.loopback:
            raise ConfigError(f"the gateway's metrics stay on loopback, not {metrics_where}")
        with locked(self.workdir):
            if self.is_running():
                self._ensure_keeper()
                return False
            if not self.server.is_running():
                raise ServerStartError("TorchServe is not running: the gateway fronts a running server")
            where = Listen.parse(listen or DEFAULT_LISTEN)
            certificates = (
                own_certificates(Path(cert), Path(key))
                if cert is not None and key is not None
                else local_certificates(self.tls_dir, server_names(where.host))
            )
            for sub in ("logs", "tmp"):
                (self.workdir / sub).mkdir(parents=True, exist_ok=True)
            self.tenants.owner_key()
            self._rotate_access_log()
            spec = self.spec(listen=[where], certificates=certificates)
            _check_port_free(where)
            _check_port_free(metrics_where)
            self._write(spec, self._server_token())
            nginx = nginx_executable()
            self._test(nginx)
            done = subprocess.run(
                [nginx, *self._args()], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
            if done.returncode != 0:
                raise ServerStartError(f"nginx did not start: {_last_lines(done.stderr or self._error_tail())}")
            try:
                self._wait_listening(where, timeout)
            except ServerStartError:
                self._stop_nginx()
                raise
            state = {
                "url": where.url,
                "listen": [str(where)],
                "metrics_listen": str(metrics_where),
                "ca_file": str(certificates.ca) if certificates.ca else None,
                "cert": str(certificates.cert),
                "key": str(certificates.key),
                "key_file": str(self.tenants.owner_key_path),
                "pid_file": str(self.pid_file),
                "server": str(self.server.workdir),
                "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            write_file(self.state_path, json.dumps(state, indent=2) + "\n")
            self._ensure_keeper()
        return True

    def reload(self, *, timeout: float = 15.0) -> bool:
        """Write the config again (tenants, token) and have nginx load it; effective when this returns.

        False when the gateway is not running (the files are still written, for its next start).
        """
        with locked(self.workdir):
            return self._reload(self._server_token(), timeout)

    def sync_token(self, *, rotate_within_s: float | None = None) -> bool:
        """Follow TorchServe's inference token; True when nginx was reloaded.

        Rotate the token when it expires within `rotate_within_s` (default: a quarter of
        token_expiration_min, at most 5 minutes), and reload nginx when the key file holds another token
        than nginx sends.
        """
        with locked(self.workdir):
            if not self.is_running():
                return False
            if self._expires_soon(rotate_within_s):
                self._rotate_inference_token()
            token = self._server_token()
            if token is None or token == self._rendered_token():
                return False
            return self._reload(token, 15.0)

    def add_tenant(self, name: str, *, models: list[str] | None = None, rate: Rate | None = None) -> tuple[Tenant, str]:
        """Make tenant `name`'s key and, if the gateway runs, reload it: the key works when this returns.

        See TenantStore.create. Returns the tenant and its key (the only time it is given out).
        """
        with locked(self.workdir):
            tenant, secret = self.tenants.create(name, models=models, rate=rate)
            self._reload(self._server_token(), 15.0)
        return tenant, secret

    def revoke_tenant(self, name: str) -> bool:
        """Remove tenant `name`'s key and, if the gateway runs, reload it: refused from when this returns.

        Connections kept alive by the old workers are closed. False when there was no such tenant.
        """
        with locked(self.workdir):
            removed = self.tenants.revoke(name)
            if removed:
                self._reload(self._server_token(), 15.0)
        return removed

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop nginx (gracefully: requests in flight finish) and the keeper; False if nginx was not running."""
        if not self.workdir.is_dir():
            return False  # never started here: make no folder
        with locked(self.workdir):
            keeper = self.keeper_pid()
            if keeper is not None:
                _terminate(keeper, 5.0)
            self.keeper_pid_file.unlink(missing_ok=True)
            stopped = self._stop_nginx(timeout)
            self.state_path.unlink(missing_ok=True)
            self.splits_path.unlink(missing_ok=True)  # a gateway starts with no live rollout
            return stopped

    def status(self) -> GatewayStatus:
        """Whether the gateway runs, where, and with what."""
        state = self.state() or {}
        pid = self.pid()
        keeper = self.keeper_pid() if pid else None
        if pid is None:
            detail = "not running"
        elif keeper is None:
            detail = "running; its keeper is not (TorchServe's token is not followed): torchship serve start --tls"
        else:
            detail = "running"
        return GatewayStatus(
            running=pid is not None,
            pid=pid,
            url=state.get("url") if pid else None,
            listen=list(state.get("listen", [])) if pid else [],
            ca_file=state.get("ca_file") if pid else None,
            keeper_pid=keeper,
            tenants=len(self.tenants.all()),
            workdir=self.workdir,
            detail=detail,
            metrics_url=f"http://{state['metrics_listen']}/metrics" if keeper and state.get("metrics_listen") else None,
        )

    def usage(self) -> dict[str, TenantUsage]:
        """Requests and errors per tenant, from the access log (and its previous generation)."""
        return summarize([self.access_log.with_name("access.log.1"), self.access_log])

    def maintain(self) -> list[str]:
        """What the keeper does every second: follow the token, keep the access log bounded; what it did."""
        done = ["reloaded nginx with TorchServe's new inference token"] if self.sync_token() else []
        for sp in self.end_orphan_splits():
            done.append(f"ended the live rollout of {sp.model} {sp.version}: its command (pid {sp.owner}) is gone")
        if self._tally is None:
            self._tally = Tally(self.access_log)
        if self._tally.update() or not self.metrics_text:
            self.metrics_text = self._tally.prometheus()  # one str, swapped whole: the metrics thread reads it
        if self._access_log_large():
            with locked(self.workdir):
                self._rotate_access_log()
                # a reload reopens the logs in the master (USR1 would have the workers reopen them, which
                # fails when they run as nobody under a root master and the folder is not theirs)
                self._reload(self._server_token(), 15.0)
            done.append("access.log became access.log.1")
        return done

    # ------------------------------------------------------------------ inside

    def _args(self) -> list[str]:
        return ["-p", str(self.workdir), "-c", str(self.conf_path), "-e", str(self.log_dir / "error.log")]

    def _write(self, spec: GatewaySpec, token: str | None) -> None:
        write_file(spec.upstream_token_path, render_upstream_token(token), private=True)
        if not spec.tenant_keys_path.exists():
            from .nginx import render_tenant_keys

            write_file(spec.tenant_keys_path, render_tenant_keys({}), private=True)
        write_file(self.conf_path, render_conf(spec), private=True)

    def _test(self, nginx: str) -> None:
        done = subprocess.run([nginx, "-t", "-q", *self._args()], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise ConfigError(f"nginx refused the gateway's config: {_last_lines(done.stderr)}")

    def _reload(self, token: str | None, timeout: float) -> bool:
        if not self.state():
            return False
        self._write(self.spec(), token)
        pid = self.pid()
        if pid is None:
            return False
        self._test(nginx_executable())
        old = _workers(pid)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # the new workers run and the old ones no longer accept: every new connection sees the new config
            current = _workers(pid)
            fresh = [p for p in current if p not in old]
            lingering = [p for p in current if p in old and "shutting down" not in _cmdline(p)]
            if fresh and not lingering:
                return True
            time.sleep(0.02)
        raise ServerStartError(f"nginx did not load the new config within {timeout:.0f} s: {self._error_tail()}")

    def _stop_nginx(self, timeout: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            proc = psutil.Process(pid)
            workers = proc.children()
            proc.send_signal(signal.SIGQUIT)  # graceful: requests in flight are answered
            _, alive = psutil.wait_procs([proc], timeout=timeout)
            for p in alive:
                p.kill()
            psutil.wait_procs(workers, timeout=5)
        except psutil.NoSuchProcess:
            pass
        self.pid_file.unlink(missing_ok=True)
        return True

    def _ensure_keeper(self) -> None:
        if self.keeper_pid() is not None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "keeper.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", KEEPER_MODULE, str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
            )
        write_file(self.keeper_pid_file, f"{proc.pid}\n")

    def _wait_listening(self, where: Listen, timeout: float) -> None:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(where.host, where.host)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is not None:
                try:
                    with socket.create_connection((host, where.port), timeout=1):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise ServerStartError(f"the gateway did not listen on {where} within {timeout:.0f} s: {self._error_tail()}")

    def _server_token(self) -> str | None:
        """TorchServe's current inference token (None without token auth, or before the server wrote it)."""
        if (self.server.config().get("disable_token_authorization") or "").lower() == "true":
            return None
        try:
            return KeyFile(self.server.key_file).key("inference")
        except ConfigError:
            return None

    def _rendered_token(self) -> str | None:
        path = self.workdir / "upstream-token.conf"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return None
        start = text.find('"Bearer ')
        return text[start + 8 : text.index('"', start + 8)] if start >= 0 else None

    def _expires_soon(self, within_s: float | None) -> bool:
        try:
            raw = json.loads(self.server.key_file.read_text(encoding="utf-8"))
            expires = _instant(raw["inference"]["expiration time"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if within_s is None:
            lifetime_s = _token_minutes(self.server.config()) * 60
            within_s = min(300.0, lifetime_s / 4)
        return expires - dt.datetime.now(dt.timezone.utc) < dt.timedelta(seconds=within_s)

    def _rotate_inference_token(self) -> None:
        """Ask TorchServe for a new inference token (with the API key); the key file then holds it."""
        import requests

        try:
            api_key = KeyFile(self.server.key_file).key("api")
            url = self.server.config().management_url + "/token"
            requests.get(url, params={"type": "inference"}, headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
        except (ConfigError, requests.RequestException, TorchServeError):
            pass  # the server is going away, or not there: nothing to follow

    def _rotate_access_log(self) -> None:
        if self._access_log_large():
            os.replace(self.access_log, self.access_log.with_name("access.log.1"))

    def _access_log_large(self) -> bool:
        try:
            return self.access_log.stat().st_size > ACCESS_LOG_MAX_BYTES
        except OSError:
            return False

    def _error_tail(self) -> str:
        try:
            return _last_lines((self.log_dir / "error.log").read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return "(no error log)"


def _limits(cfg: ServerConfig) -> Limits:
    """The edge's limits from the server's config: its max_request_size and its response timeout."""
    try:
        response_s = int(float(cfg.get("default_response_timeout") or 120))
    except ValueError:
        response_s = 120
    return Limits(max_body_bytes=cfg.max_request_size, upstream_read_s=response_s + 10)


def _token_minutes(cfg: ServerConfig) -> float:
    try:
        return float(cfg.get("token_expiration_min") or 60)
    except ValueError:
        return 60.0


def _instant(text: str) -> dt.datetime:
    """A Java Instant as TorchServe writes it (2026-11-30T17:11:53.441648359Z), on any Python 3.10+."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", str(text).strip())
    if not m:
        raise ValueError(f"not an instant: {text!r}")
    when = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return when + dt.timedelta(microseconds=int((m.group(2) or "0")[:6].ljust(6, "0")))


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _is_process(pid: int, *marks: str) -> bool:
    try:
        proc = psutil.Process(pid)
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        line = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return all(mark in line for mark in marks)


def _workers(master: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(master).children()]
    except psutil.Error:
        return []


def _terminate(pid: int, timeout: float) -> None:
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        _, alive = psutil.wait_procs([proc], timeout=timeout)
        for p in alive:
            p.kill()
    except psutil.NoSuchProcess:
        pass


def _check_port_free(where: Listen) -> None:
    family = socket.AF_INET6 if ":" in where.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((where.host, where.port))
        except OSError as exc:
            raise ServerStartError(
                f"the gateway cannot listen on {where}: {exc.strerror} (another program there? choose --listen)"
            ) from None


def _last_lines(text: str, n: int = 5) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "(nothing said)"
