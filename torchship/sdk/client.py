"""The TorchServe client: one method per management and inference endpoint.

Three layers, bottom up: `_send` (one HTTP exchange with the token and the error mapping),
`_call` (tokens re-read or rotated once, safe retries with back-off), and the public methods,
each one or two lines over `_call` and named as TorchServe's docs name the operation.
"""

from __future__ import annotations

import codecs
import gzip
import http.client
import json
import os
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, overload
from urllib.parse import quote, urlsplit

import numpy as np
import requests
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, get_environ_proxies, select_proxy
from urllib3.util.wait import wait_for_read

from torchship.archiver.names import check_name, check_name_version, check_version
from torchship.sdk.auth import KeyFile, StaticKeys
from torchship.sdk.config import (
    DEFAULT_INFERENCE_URL,
    DEFAULT_MANAGEMENT_URL,
    DEFAULT_METRICS_URL,
    GatewayInfo,
    ServerConfig,
)
from torchship.sdk.errors import (
    BadInput,
    ConfigError,
    ModelNotFound,
    PayloadTooLarge,
    ReadinessTimeout,
    ServerError,
    ServerUnreachable,
    ServiceUnavailable,
    TorchServeError,
    Unauthorized,
    WorkerDied,
    error_from_response,
)
from torchship.sdk.logs import Cause, ServerLogs
from torchship.sdk.metrics import Metrics
from torchship.sdk.types import ModelDescription, ModelSummary

__all__ = ["TorchServe", "GatewayKeys"]

_MANAGEMENT, _INFERENCE, _METRICS = "management", "inference", "metrics"
# how long a client behind a TLS gateway waits before retrying a request that TorchServe refused the
# gateway's token for: the gateway's keeper looks every second and reloads nginx in well under one
_GATEWAY_TOKEN_WAIT_S = 1.5


class TorchServe:
    """A client for one TorchServe server.

    >>> ts = TorchServe.from_config("config.properties")
    >>> ts.register("mlp-1.0.mar", initial_workers=1)
    >>> ts.predict("mlp", {"data": [0.0] * 100})

    Args:
        management_url: the management API's address (register, scale, describe, ...).
        inference_url: the inference API's address (predict, explain, ping, v2).
        metrics_url: the metrics API's address (Prometheus text).
        key_file: the server's token key file (`key_file.json`), read when a key is first needed
            and again when one is refused; None for a server without token auth.
        keys: the keys themselves (a `KeyFile`, `StaticKeys` or `GatewayKeys`), instead of `key_file`.
        timeout: seconds to wait for an answer (register, unregister and scale wait at least 120).
        retries: how often a request that is safe to repeat (reads, predictions) is retried when
            the server is unreachable or busy; register and unregister are never repeated.
        backoff: seconds before the first retry, doubled for each one after it.
        session: a `requests.Session` to use for every request (tests pass a fake transport in
            one). By default each thread gets a keep-alive session of its own, and the calls
            without query parameters (predict, explain, v2, ping, describe, ...) skip requests'
            per-call work (environment, proxy and netrc look-ups, request preparation: most of a
            prediction's client time) and go over one keep-alive `http.client` connection per
            thread and API (https too, when `ca_file` is given); over https without `ca_file`, or
            through a proxy from the environment, they go through requests. See "Overhead" in
            docs/python-api.md.
        compress_min_bytes: gzip request bodies of at least this many bytes (None: never). It pays
            only on slow links (benchmarks/bench_compression.py); torchship's handlers unpack them.
        max_request_size: the server's max_request_size in bytes, when known (`from_config` reads
            it): a larger body is refused before it is sent, with a message that says what to do.
        logs: the server's log files (`ServerLogs`), when this machine can read them (`from_config`
            finds them beside the key file): a register or scale whose worker fails then raises a
            `ServerError` whose `cause` names the worker's exception and the log line to read.
        ca_file: a PEM file of the certificate authorities to trust for https addresses, and only
            those (a TLS gateway's CA: `.torchship/tls/ca.pem` of a project served with `serve start
            --tls`); None trusts what requests trusts. `from_config` sets it when it goes through the
            project's gateway.
    """

    def __init__(
        self,
        management_url: str = DEFAULT_MANAGEMENT_URL,
        inference_url: str = DEFAULT_INFERENCE_URL,
        metrics_url: str = DEFAULT_METRICS_URL,
        key_file: str | os.PathLike[str] | None = None,
        *,
        keys: KeyFile | StaticKeys | GatewayKeys | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.2,
        session: requests.Session | None = None,
        compress_min_bytes: int | None = None,
        max_request_size: int | None = None,
        logs: ServerLogs | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.urls = {
            _MANAGEMENT: management_url.rstrip("/"),
            _INFERENCE: inference_url.rstrip("/"),
            _METRICS: metrics_url.rstrip("/"),
        }
        if keys is None:
            keys = KeyFile(key_file) if key_file else StaticKeys()
        self.keys = keys
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._session = session
        self._local = threading.local()
        # gzip request bodies of at least this many bytes (None: never). Pays only on slow links:
        # see benchmarks/bench_compression.py. torchship's handlers unpack them; others may not.
        self.compress_min_bytes = compress_min_bytes
        # the server's max_request_size, when known (from_config): larger bodies are refused here,
        # before sending, with a message that says what to do (TorchServe answers an empty 413)
        self.max_request_size = max_request_size
        self.logs = logs
        self.ca_file = Path(ca_file) if ca_file is not None else None
        # the one TLS context of the keep-alive fast path: only ca_file's authorities, hostname checked
        self._tls = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file is not None else None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str],
        *,
        key_file: str | os.PathLike[str] | None = None,
        gateway: bool | None = None,
        **kwargs: Any,
    ) -> TorchServe:
        """A client for the server that runs from this config file.

        The key file is found beside the config (a server's working folder) or in
        ``.torchship/server/`` next to it (a project's config.properties); the server's logs in
        the `logs/` folder beside that key file.

        When that server was started with `torchship serve start --tls` and its gateway runs, the
        inference calls (predict, stream, explain, v2, ping) go through the gateway: https, pinning
        the project's CA, with the project's own gateway key; management and metrics stay on
        loopback. `gateway`: None (that default), False (always TorchServe's own inference address),
        True (the gateway, or ConfigError when none runs).
        """
        config = ServerConfig.load(path)
        here = config.path.parent
        beside = here / "key_file.json"
        workdir = here if beside.exists() else here / ".torchship" / "server"
        if key_file is None:
            key_file = workdir / "key_file.json"
            if (config.get("disable_token_authorization") or "").lower() == "true":
                key_file = None
        kwargs.setdefault("max_request_size", config.max_request_size)
        kwargs.setdefault("logs", ServerLogs(workdir / "logs", key_file=workdir / "key_file.json"))
        inference_url = config.inference_url
        through = GatewayInfo.for_server(workdir) if gateway is not False else None
        if through is None and gateway:
            raise ConfigError(
                f"no TLS gateway runs in front of the server of {config.path}: torchship serve start --tls"
            )
        if through is not None:
            inference_url = through.url
            kwargs.setdefault("ca_file", through.ca_file)
            kwargs.setdefault("keys", GatewayKeys(key_file, through.key_file))
        return cls(config.management_url, inference_url, config.metrics_url, key_file, **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> TorchServe:
        """A client from TS_MANAGEMENT_URL, TS_INFERENCE_URL, TS_METRICS_URL and TS_KEY_FILE."""
        env = os.environ
        return cls(
            env.get("TS_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL),
            env.get("TS_INFERENCE_URL", DEFAULT_INFERENCE_URL),
            env.get("TS_METRICS_URL", DEFAULT_METRICS_URL),
            env.get("TS_KEY_FILE") or None,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"TorchServe(management={self.urls[_MANAGEMENT]!r}, inference={self.urls[_INFERENCE]!r}, "
            f"keys={self.keys!r})"
        )

    def close(self) -> None:
        """Close this thread's pooled connections (a session given to the constructor stays open)."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None
        routes = getattr(self._local, "direct", None)
        if routes:
            for route in routes.values():
                if route is not None:
                    route.close()
            self._local.direct = None

    def __enter__(self) -> TorchServe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    @property
    def session(self) -> requests.Session:
        """A keep-alive session per thread (requests.Session is not thread-safe)."""
        if self._session is not None:
            return self._session
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            if self.ca_file is not None:
                session.verify = str(self.ca_file)  # only these authorities (urllib3 loads no others)
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _direct(self, api: str) -> _Direct | None:
        """This thread's keep-alive connection to `api`, or None where requests carries every call:
        a session given to the constructor, https without ca_file (requests' certificate settings),
        credentials in the URL, or a proxy from the environment for it. Decided once per thread and API."""
        if self._session is not None:
            return None
        routes = getattr(self._local, "direct", None)
        if routes is None:
            routes = self._local.direct = {}
        try:
            return routes[api]
        except KeyError:
            pass
        base = self.urls[api]
        parts = urlsplit(base)
        route = None
        tls = self._tls if parts.scheme == "https" else None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # not a port: requests says so, as it always did
            port = None
        plain_or_pinned = parts.scheme == "http" or tls is not None
        if plain_or_pinned and parts.hostname and port and not parts.username and not parts.query:
            if select_proxy(base, get_environ_proxies(base)) is None:
                route = _Direct(parts.hostname, port, parts.path, tls)
        routes[api] = route
        return route

    def _send(
        self,
        api: str,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> requests.Response:
        url = self.urls[api] + path
        size = len(data) if isinstance(data, (bytes, bytearray)) else None
        if size is not None and self.max_request_size is not None and size > self.max_request_size:
            raise PayloadTooLarge(
                413, "PayloadTooLarge", _too_large(size, self.max_request_size) + " (not sent)", _strip_query(url)
            )
        headers = dict(headers or {})
        key_kind = _MANAGEMENT if api == _MANAGEMENT else _INFERENCE
        if api != _METRICS:
            key = self.keys.key(key_kind)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        timeout = timeout or self.timeout
        route = None if stream or params else self._direct(api)
        if route is not None:
            resp = self._send_direct(route, api, method, url, path, data, headers, timeout)
        else:
            try:
                resp = self.session.request(
                    method,
                    url,
                    params=_clean(params),
                    data=data,
                    headers=headers,
                    timeout=timeout,
                    stream=stream,
                    # per request: requests lets REQUESTS_CA_BUNDLE override a session's verify
                    verify=str(self.ca_file) if self.ca_file is not None else None,
                )
            except requests.exceptions.ConnectionError as exc:
                raise ServerUnreachable(_unreachable(self.urls[api], exc)) from None
            except requests.exceptions.Timeout:
                raise ServerUnreachable(f"{method} {url} got no answer within {timeout:.0f} s") from None
        if resp.status_code >= 400:
            body = resp.content
            resp.close()
            if resp.status_code == 413 and not body.strip():  # the frontend's own 413 has no body
                raise PayloadTooLarge(
                    413, "PayloadTooLarge", _too_large(size, self.max_request_size), _strip_query(url)
                )
            raise error_from_response(resp.status_code, body, _strip_query(url))
        return resp

    def _send_direct(
        self,
        route: _Direct,
        api: str,
        method: str,
        url: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> requests.Response:
        """One exchange over this thread's keep-alive connection, answered as the requests.Response
        that requests would build (status, reason, headers, body, encoding), so all that follows is
        the same. What requests adds per call (environment and netrc look-ups, request
        preparation, cookies, hooks) was most of a prediction's client time
        (benchmarks/bench_client.py). Like requests' own adapter, nothing is retried here: _call
        decides. TorchServe never redirects nor sets cookies."""
        sent = CaseInsensitiveDict(self.session.headers)  # requests' defaults: User-Agent, Accept, ...
        sent["Accept-Encoding"] = "identity"  # (still decoded below, should a server compress anyway)
        sent.update(headers)
        plain = {k: v for k, v in sent.items() if v is not None}  # None drops a default header, as in requests
        for fresh in (False, True):
            try:
                conn = route.connection(timeout, fresh=fresh)
            except OSError as exc:  # refused, unknown host, or no connection within the timeout
                raise ServerUnreachable(_unreachable(self.urls[api], exc)) from None
            reused = route.reused
            try:
                conn.request(method, route.prefix + path, body=data, headers=plain)
                answer = conn.getresponse()
                body = answer.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
                # a kept-alive connection the server closed as this request went out (an nginx reload, an
                # idle timeout) got not a byte of answer: it is sent once more on a new connection, as
                # urllib3 does; on a new connection the same failure is the server's
                route.close()
                if not reused or fresh:
                    raise ServerUnreachable(
                        f"{method} {url}: the server closed the connection without an answer"
                    ) from None
            except TimeoutError:
                route.close()
                raise ServerUnreachable(f"{method} {url} got no answer within {timeout:.0f} s") from None
            except (OSError, http.client.HTTPException) as exc:  # reset, closed, or not HTTP
                route.close()
                raise ServerUnreachable(_unreachable(self.urls[api], exc)) from None
        resp = requests.Response()
        resp.status_code = answer.status
        resp.reason = answer.reason
        resp.headers = _headers(answer)
        resp.url = url
        resp.encoding = get_encoding_from_headers(resp.headers)
        resp.raw = answer
        resp._content = _decompress(body, resp.headers.get("Content-Encoding"))
        resp._content_consumed = True  # type: ignore[attr-defined]
        return resp

    def _call(
        self, api: str, method: str, path: str, *, safe: bool, retry_worker_died: bool = False, **kwargs: Any
    ) -> requests.Response:
        """_send with a token refresh and, where `safe`, bounded retries with back-off.

        `safe` means repeating the request cannot do harm: reads and predictions. Register and
        unregister are never repeated.
        """
        refreshed = False
        attempt = 0
        while True:
            try:
                return self._send(api, method, path, **kwargs)
            except Unauthorized:
                if refreshed:
                    raise
                refreshed = True
                self._refresh_key(_MANAGEMENT if api == _MANAGEMENT else _INFERENCE)
            except (ServerUnreachable, ServiceUnavailable, WorkerDied) as exc:
                retriable = safe and (not isinstance(exc, WorkerDied) or retry_worker_died)
                if not retriable or attempt >= self.retries:
                    raise
                time.sleep(self.backoff * (2**attempt))
                attempt += 1

    def _log_mark(self) -> dict[str, int] | None:
        return self.logs.mark() if self.logs is not None and self.logs.exists() else None

    def _worker_cause(self, name: str | None, version: str | None, mark: dict[str, int] | None) -> Cause | None:
        """Why a worker of `name` failed since `mark`, from the server's logs (None when unknown)."""
        if self.logs is None or mark is None:
            return None
        try:
            return self.logs.wait_for_cause(name, version, since=mark)
        except OSError:
            return None

    def _refresh_key(self, kind: str) -> None:
        """Re-read the key file; if nothing changed the key expired, so rotate it with the API key.

        Through a gateway, TorchServe's inference token is the gateway's (its keeper rotates it and
        reloads nginx): the client waits a moment for that instead of rotating it again.
        """
        if kind == _INFERENCE and isinstance(self.keys, GatewayKeys):
            self.keys.reload()
            time.sleep(_GATEWAY_TOKEN_WAIT_S)
            return
        if self.keys.reload():
            return
        api_key = self.keys.key("api")
        if not api_key:
            return
        url = self.urls[_MANAGEMENT] + "/token"
        try:
            resp = self.session.get(
                url, params={"type": kind}, timeout=self.timeout, headers={"Authorization": f"Bearer {api_key}"}
            )
        except requests.exceptions.RequestException:
            return
        if resp.status_code == 200:
            self.keys.reload()

    # ------------------------------------------------------------------ health

    def ping(self) -> str:
        """The server's health: 'Healthy', or raises (an unhealthy server answers 500)."""
        resp = self._call(_INFERENCE, "GET", "/ping", safe=True)
        return str(_json(resp).get("status", ""))

    def is_healthy(self) -> bool:
        """Whether the server answers /ping with Healthy (never raises)."""
        try:
            return self.ping() == "Healthy"
        except TorchServeError:
            return False

    # ------------------------------------------------------------------ management

    def register(
        self,
        archive: str | os.PathLike[str],
        *,
        model_name: str | None = None,
        initial_workers: int = 1,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        response_timeout: int | None = None,
        startup_timeout: int | None = None,
        synchronous: bool = True,
        timeout: float | None = None,
    ) -> str:
        """Register an archive of the server's model store by its file name.

        Only a bare file name is passed to TorchServe: never a URL or a path (CVE-2023-43654).
        `model_name`, when given, must pass the model-name rule (archiver.names): checked, like the
        file name, before anything is sent.
        """
        name = _store_file_name(archive)
        if model_name is not None:
            check_name(model_name)
        params = {
            "url": name,
            "model_name": model_name,
            "initial_workers": initial_workers,
            "batch_size": batch_size,
            "max_batch_delay": max_batch_delay,
            "response_timeout": response_timeout,
            "startup_timeout": startup_timeout,
            "synchronous": _bool(synchronous),
        }
        mark = self._log_mark()
        try:
            resp = self._call(
                _MANAGEMENT, "POST", "/models", safe=False, params=params, timeout=timeout or max(self.timeout, 120)
            )
        except ServerError as exc:
            raise exc.with_cause(self._worker_cause(model_name, None, mark)) from None
        return str(_json(resp).get("status", ""))

    def unregister(self, name: str, version: str | None = None, *, timeout: float | None = None) -> str:
        """Remove a model version from the server (default: the default version); the archive stays."""
        resp = self._call(
            _MANAGEMENT, "DELETE", _model_path(name, version), safe=False, timeout=timeout or max(self.timeout, 120)
        )
        return str(_json(resp).get("status", ""))

    def scale(
        self,
        name: str,
        *,
        min_workers: int,
        max_workers: int | None = None,
        version: str | None = None,
        synchronous: bool = True,
        timeout: float | None = None,
    ) -> str:
        """Set the workers of a model version (default: the default version).

        With `synchronous`, the answer comes once they run.
        """
        params = {
            "min_worker": min_workers,
            "max_worker": max_workers if max_workers is not None else min_workers,
            "synchronous": _bool(synchronous),
        }
        mark = self._log_mark()
        try:
            resp = self._call(
                _MANAGEMENT,
                "PUT",
                _model_path(name, version),
                safe=True,
                params=params,
                timeout=timeout or max(self.timeout, 120),
            )
        except ServerError as exc:
            raise exc.with_cause(self._worker_cause(name, version, mark)) from None
        return str(_json(resp).get("status", ""))

    def set_default(self, name: str, version: str) -> str:
        """Make `version` the one that /predictions/NAME serves."""
        check_version(version)  # required here: None would make the path /models/NAME/set-default
        resp = self._call(_MANAGEMENT, "PUT", f"{_model_path(name, version)}/set-default", safe=True)
        return str(_json(resp).get("status", ""))

    def describe(self, name: str, version: str | None = None, *, customized: bool = False) -> list[ModelDescription]:
        """Describe a model: its default version, one version, or every version ("all")."""
        params = {"customized": "true"} if customized else None
        raw = _json(self._call(_MANAGEMENT, "GET", _model_path(name, version, every=True), safe=True, params=params))
        entries = raw if isinstance(raw, list) else [raw]
        default = self._default_version(name) if version is not None else None
        out = []
        for entry in entries:
            is_default = (version is None) or entry.get("modelVersion") == default
            out.append(ModelDescription.from_json(entry, is_default=is_default))
        return out

    def _default_version(self, name: str) -> str | None:
        raw = _json(self._call(_MANAGEMENT, "GET", _model_path(name, None), safe=True))
        entries = raw if isinstance(raw, list) else [raw]
        return entries[0].get("modelVersion") if entries else None

    def versions(self, name: str) -> list[ModelDescription]:
        """Every registered version of a model, the default flagged."""
        return self.describe(name, "all")

    def list_models(self, *, page_size: int = 100) -> list[ModelSummary]:
        """Every registered model, following all pages."""
        out: list[ModelSummary] = []
        token: str | None = None
        while True:
            raw = _json(
                self._call(
                    _MANAGEMENT, "GET", "/models", safe=True, params={"limit": page_size, "next_page_token": token}
                )
            )
            out += [ModelSummary(m["modelName"], m.get("modelUrl", "")) for m in raw.get("models", [])]
            token = raw.get("nextPageToken")
            if not token:
                return out

    def wait_until_ready(
        self, name: str, version: str | None = None, *, timeout: float = 120.0, poll: float = 0.25
    ) -> ModelDescription:
        """Wait until the model (or version) has at least min_workers (and one) READY workers."""
        check_name_version(name, version)  # one version, not describe's "all"
        mark = self._log_mark()
        deadline = time.monotonic() + timeout
        last = "not registered"
        while True:
            try:
                desc = self.describe(name, version)[0]
                if desc.ready_workers >= max(desc.min_workers, 1):
                    return desc
                last = f"{desc.ready_workers}/{max(desc.min_workers, 1)} workers ready"
            except ModelNotFound:
                last = "not registered"
            if time.monotonic() >= deadline:
                label = f"{name}/{version}" if version else name
                cause = self._worker_cause(name, version, mark)
                why = f"the worker failed with {cause}" if cause else "see the server's model_log.log"
                raise ReadinessTimeout(f"{label} not ready after {timeout:.0f} s ({last}); {why}")
            time.sleep(poll)

    # ------------------------------------------------------------------ inference

    def encode_body(self, data: Any) -> tuple[bytes, dict[str, str]]:
        """Encode a request body as this client sends it, and give its headers.

        JSON for objects, .npy for numpy arrays, bytes and files as they are; gzipped when
        compress_min_bytes says so (level 1: the cheapest; the answer is the same either way).
        Load generators use it to send exactly what `predict` would.
        """
        body, content_type = _encode(data)
        headers = {"Content-Type": content_type}
        if self.compress_min_bytes is not None and len(body) >= self.compress_min_bytes:
            body = gzip.compress(body, compresslevel=1, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    def prediction_url(self, name: str, version: str | None = None) -> str:
        """The URL `predict` posts to for `name` (and `version`), both checked by the name rule."""
        return f"{self.urls[_INFERENCE]}/predictions/{_model_path(name, version)[len('/models/') :]}"

    def predict(
        self,
        name: str,
        data: Any,
        *,
        version: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one prediction request and return the answer.

        `data`: a JSON-able object, a numpy array (sent as .npy bytes), raw bytes, or a pathlib.Path to send
        as is.

        JSON answers are decoded; anything else comes back as bytes (or the Response when raw).
        """
        body, hdrs = self.encode_body(data)
        resp = self._call(
            _INFERENCE,
            "POST",
            f"/predictions/{_model_path(name, version)[len('/models/') :]}",
            safe=True,
            retry_worker_died=True,
            data=body,
            headers={**hdrs, **(headers or {})},
            timeout=timeout,
        )
        return resp if raw else _decode(resp)

    def explain(self, name: str, data: Any, *, version: str | None = None, timeout: float | None = None) -> Any:
        """An explanation of one prediction (POST /explanations/...), if the handler offers one."""
        body, hdrs = self.encode_body(data)
        resp = self._call(
            _INFERENCE,
            "POST",
            f"/explanations/{_model_path(name, version)[len('/models/') :]}",
            safe=True,
            data=body,
            headers=hdrs,
            timeout=timeout,
        )
        return _decode(resp)

    def infer_v2(
        self,
        name: str,
        inputs: dict[str, Any] | list[dict[str, Any]],
        *,
        outputs: list[str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Open Inference Protocol (KServe v2) inference: POST /v2/models/{name}/infer.

        `inputs` maps input names to arrays (their shape and datatype are taken from numpy), or is
        a list of v2 tensor objects as they go on the wire. Returns the v2 response, with each
        output's `data` as a numpy array of its shape. TorchServe routes v2 only to a model's
        default version.
        """
        check_name(name)
        if isinstance(inputs, dict):
            tensors = [_v2_tensor(n, a) for n, a in inputs.items()]
        else:
            tensors = list(inputs)
        request: dict[str, Any] = {"inputs": tensors}
        if request_id:
            request["id"] = request_id
        if outputs:
            request["outputs"] = [{"name": n} for n in outputs]
        body, hdrs = self.encode_body(request)
        resp = self._call(
            _INFERENCE,
            "POST",
            f"/v2/models/{quote(name, safe='')}/infer",
            safe=True,
            data=body,
            headers=hdrs,
            timeout=timeout,
        )
        answer = _json(resp)
        for out in answer.get("outputs", []):
            dtype = _V2_TO_NUMPY.get(out.get("datatype"), object)
            out["data"] = np.asarray(out.get("data", []), dtype=dtype).reshape(out.get("shape", [-1]))
        return answer

    def predict_many(
        self, name: str, items: Iterable[Any], *, version: str | None = None, concurrency: int = 8
    ) -> list[Any]:
        """Predict every item concurrently over pooled keep-alive connections.

        The result list is in the order of `items`; an item that failed holds its APIError (or
        TorchServeError) instead of a result, so one bad item never hides the others.
        """
        check_name_version(name, version)  # once, before any thread starts or any request is sent
        items = list(items)

        def one(item: Any) -> Any:
            try:
                return self.predict(name, item, version=version)
            except TorchServeError as exc:
                return exc

        if not items:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items)))) as pool:
            return list(pool.map(one, items))

    @overload
    def stream(
        self, name: str, data: Any, *, version: str | None = ..., timeout: float | None = ..., raw: Literal[False] = ...
    ) -> Iterator[str]: ...

    @overload
    def stream(
        self, name: str, data: Any, *, version: str | None = ..., timeout: float | None = ..., raw: Literal[True]
    ) -> Iterator[bytes]: ...

    def stream(
        self, name: str, data: Any, *, version: str | None = None, timeout: float | None = None, raw: bool = False
    ) -> Iterator[str] | Iterator[bytes]:
        """Yield the chunks of a streaming handler's answer as they arrive.

        Text is decoded as UTF-8, never splitting a character; with `raw`, bytes. The name and version are
        checked when this is called, not when the first chunk is asked for.
        """
        path = f"/predictions/{_model_path(name, version)[len('/models/') :]}"
        return self._stream(path, data, timeout=timeout, raw=raw)

    def _stream(self, path: str, data: Any, *, timeout: float | None, raw: bool) -> Iterator[Any]:
        body, hdrs = self.encode_body(data)
        resp = self._call(_INFERENCE, "POST", path, safe=True, data=body, headers=hdrs, timeout=timeout, stream=True)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        with resp:
            for chunk in resp.iter_content(chunk_size=None):
                if raw:
                    yield chunk
                    continue
                text = decoder.decode(chunk)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail and not raw:
                yield tail

    # ------------------------------------------------------------------ metrics

    def metrics_text(self) -> str:
        """The Prometheus text of the metrics port (needs metrics_mode=prometheus)."""
        return self._call(_METRICS, "GET", "/metrics", safe=True).text

    def metrics(self) -> Metrics:
        """The metrics port parsed into samples, with per-model helpers (requests, latency)."""
        return Metrics.from_text(self.metrics_text())


_V2_TO_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_NUMPY_TO_V2 = {np.dtype(v).name: k for k, v in _V2_TO_NUMPY.items()}


def _v2_tensor(name: str, value: Any) -> dict[str, Any]:
    array = np.asarray(value)
    if array.dtype.name not in _NUMPY_TO_V2:
        array = array.astype(np.float32) if array.dtype.kind == "f" else array
    if array.dtype.name not in _NUMPY_TO_V2:
        raise BadInput(f"input {name!r}: cannot send numpy {array.dtype} as an Open Inference Protocol tensor")
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": _NUMPY_TO_V2[array.dtype.name],
        "data": array.reshape(-1).tolist(),
    }


# one encoder for every JSON body (json.dumps with options builds a new one per call)
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class GatewayKeys:
    """The keys of a client that reaches inference through a TLS gateway (`from_config` makes it).

    The inference key is the gateway's tenant key, read from `tenant_key_file` (the project's
    `.torchship/gateway/owner.key`); management and API keys are TorchServe's own, from its key file
    (management stays on loopback). Keys never appear in repr, logs or errors.
    """

    def __init__(self, key_file: str | os.PathLike[str] | None, tenant_key_file: str | os.PathLike[str]) -> None:
        self.server: KeyFile | StaticKeys = KeyFile(key_file) if key_file else StaticKeys()
        self.tenant_key_file = Path(tenant_key_file)
        self._tenant: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GatewayKeys({self.server!r}, {str(self.tenant_key_file)!r})"

    def key(self, kind: str) -> str | None:
        """The tenant key for 'inference'; TorchServe's key for 'management' and 'api'."""
        if kind != _INFERENCE:
            return self.server.key(kind)
        with self._lock:
            if self._tenant is None:
                self._tenant = self._read()
            return self._tenant

    def reload(self) -> bool:
        """Read both again; True when any key changed."""
        with self._lock:
            old, self._tenant = self._tenant, self._read()
        return self.server.reload() or old != self._tenant

    def _read(self) -> str:
        try:
            return self.tenant_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the gateway key {self.tenant_key_file}: {exc.strerror}") from None


class _Direct:
    """One thread's keep-alive http.client connection to one API (host, port, the base URL's path;
    with `tls`, an https connection that trusts only that context's authorities)."""

    __slots__ = ("host", "port", "prefix", "conn", "timeout", "tls", "reused")

    def __init__(self, host: str, port: int, prefix: str, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.prefix, self.tls = host, port, prefix, tls
        self.conn: http.client.HTTPConnection | None = None
        self.timeout: float | None = None
        self.reused = False  # whether the last connection() was one already open

    def connection(self, timeout: float, *, fresh: bool = False) -> http.client.HTTPConnection:
        """The open connection, or a new one (`fresh`: always): an idle connection the server closed (or
        that has bytes nobody asked for) is replaced before anything is sent on it, as urllib3 does."""
        conn = self.conn
        if fresh and conn is not None:
            conn.close()
        if conn is None:
            if self.tls is not None:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.tls)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self.conn = conn
        elif conn.sock is not None and wait_for_read(conn.sock, timeout=0.0):
            conn.close()
        self.reused = conn.sock is not None
        if conn.sock is None:
            conn.timeout = timeout
            try:
                conn.connect()
                assert conn.sock is not None
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3 (and 3.11's http.client)
            except OSError:
                conn.close()
                raise
        elif self.timeout != timeout:
            conn.sock.settimeout(timeout)
        self.timeout = timeout
        return conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _headers(answer: http.client.HTTPResponse) -> CaseInsensitiveDict[str]:
    """The answer's headers as requests gives them (case-insensitive; repeated ones joined)."""
    out: CaseInsensitiveDict[str] = CaseInsensitiveDict()
    for name, value in answer.getheaders():
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _decompress(body: bytes, encoding: str | None) -> bytes:
    """The body as requests would give it: gzip and deflate undone (TorchServe sends neither)."""
    if not encoding or not body:
        return body
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    return body


def _unreachable(base: str, exc: BaseException) -> str:
    return f"no TorchServe answers at {base}: is it running? (torchship serve start) [{type(exc).__name__}]"


def _too_large(size: int | None, limit: int | None) -> str:
    body = f"the request body ({size:,} bytes)" if size is not None else "the request body"
    over = f"the server's max_request_size ({limit:,} bytes)" if limit else "the server's max_request_size"
    return (
        f"{body} is over {over}: send less, compress it (compress_min_bytes), or raise max_request_size "
        "in config.properties"
    )


def _model_path(name: str, version: str | None, *, every: bool = False) -> str:
    """/models/NAME[/VERSION], both checked by the one rule (archiver.names) before any request:
    a name is never a path, and everything TorchServe registers can be addressed again."""
    check_name_version(name, None if every and version == "all" else version)  # describe's "all": every version
    path = f"/models/{name}"
    if version is not None:
        path += f"/{version}"
    return path


def _store_file_name(archive: str | os.PathLike[str]) -> str:
    text = str(archive)
    if "://" in text:
        raise BadInput(f"register takes an archive of the local model store, not a URL: {text}")
    name = Path(text).name
    if not name or name in (".", "..") or name.startswith(".") or not name.isprintable():
        raise BadInput(f"not an archive file name of the model store: {text!r}")
    return name


def _clean(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None}


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0]


def _json(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return {}


def _encode(data: Any) -> tuple[bytes, str]:
    if isinstance(data, np.ndarray):  # binary tensors: numpy's .npy format, no JSON on either side
        import io

        buf = io.BytesIO()
        np.save(buf, data, allow_pickle=False)
        return buf.getvalue(), "application/x-npy"
    if isinstance(data, Path):
        return data.read_bytes(), "application/octet-stream"
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), "application/octet-stream"
    return _JSON.encode(data).encode(), "application/json"


def _decode(resp: requests.Response) -> Any:
    content_type = resp.headers.get("Content-Type", "")
    body = resp.content
    if "json" in content_type or not content_type:
        try:
            return json.loads(body)
        except ValueError:
            pass
    if content_type.startswith("text/"):
        return body.decode(resp.encoding or "utf-8", "replace")
    return body
