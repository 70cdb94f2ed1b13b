"""The gateway's nginx configuration, rendered from a data structure (`GatewaySpec`), never edited by hand.

`render_conf(spec)` gives nginx.conf; `render_tenant_keys` and `render_upstream_token` give the two
0600 files it includes (the tenants' keys, and TorchServe's inference token). What the config does:

- TLS only (TLS 1.2 and 1.3, ECDHE with AES-GCM or ChaCha20), on the listen addresses; a plain HTTP
  request on that port is answered 400 by nginx itself. HTTP/1.1 with keep-alive to the callers,
  and a keep-alive pool to TorchServe (proxy_http_version 1.1, Connection "").
- Only the inference routes: POST /predictions/NAME[/VERSION], POST /explanations/NAME[/VERSION],
  POST /v2/models/NAME/infer, GET /ping. Anything else is 404: management and metrics are never
  reached through the gateway (they are not even upstreams).
- Every request needs a tenant key (401 otherwise); a key that may not call a model gets 403; over
  its rate, 429 with Retry-After (nginx limit_req: one zone per distinct rate and burst).
- Only named request headers reach TorchServe (`FORWARDED_HEADERS`): the caller's Authorization never
  does; TorchServe's token is set upstream and is in no answer.
- Responses are not buffered: a streamed (chunked) answer reaches the caller chunk by chunk.

Live rollouts (`Split`, torchship rollout --live): /predictions/NAME with no version is drawn per
request (or per client) into the candidate's share (`_live_locations`: its 5xx answered by the default)
or a mirror to the candidate whose answer reaches no one; see torchship.ops.live.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from torchship.sdk.errors import ConfigError

from .tenants import OWNER, Rate, Tenant
from .tls import Certificates

__all__ = [
    "Listen",
    "UpstreamServer",
    "Upstream",
    "Limits",
    "Route",
    "Split",
    "GatewaySpec",
    "ROUTES",
    "FORWARDED_HEADERS",
    "render_conf",
    "render_tenant_keys",
    "render_upstream_token",
    "default_worker_processes",
]

# TorchServe's model-name and version rules (torchship.archiver.names), as nginx regex captures
_MODEL = r"(?<model>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
_VERSION = r"(?<model_version>[0-9A-Za-z][0-9A-Za-z_.-]{0,63})"

# Mozilla's "intermediate" TLS 1.2 suites without DHE (TLS 1.3 suites are OpenSSL's, all modern)
CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

# The only request headers TorchServe gets (proxy_pass_request_headers off): what torchship's handlers
# and client use, the gateway's request id, and who called. The caller's Authorization is not among
# them: TorchServe's own token replaces it.
FORWARDED_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "$content_type"),
    ("Content-Encoding", "$http_content_encoding"),  # gzip bodies (compress_min_bytes): handlers unpack them
    ("Accept", "$http_accept"),
    ("Inference-Header-Content-Length", "$http_inference_header_content_length"),  # v2 binary extension
    ("X-Request-Id", "$request_id"),  # stamped by the gateway, whatever the caller sent
    ("X-Torchship-Tenant", "$tenant"),
)


@dataclass(frozen=True)
class Listen:
    """One TLS listener: host (an IP address or a name) and port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """Read HOST:PORT ([v6]:PORT for IPv6)."""
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", (text or "").strip())
        if not m:
            raise ConfigError(f"invalid listen address {text!r}: HOST:PORT, e.g. 127.0.0.1:8443 or [::1]:8443")
        host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if not 0 < int(port) < 65536:
            raise ConfigError(f"invalid port in {text!r}")
        return cls(host, int(port))

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the listener."""
        import ipaddress

        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The https URL a client on this machine uses (an unspecified address is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"https://[{host}]:{self.port}" if ":" in host else f"https://{host}:{self.port}"


@dataclass(frozen=True)
class UpstreamServer:
    """One TorchServe inference listener behind the gateway (`weight`: its share, for the live rollouts)."""

    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class Upstream:
    """A group of TorchServe listeners with a keep-alive pool of `keepalive` idle connections per nginx worker."""

    name: str
    servers: tuple[UpstreamServer, ...]
    keepalive: int = 32


@dataclass(frozen=True)
class Limits:
    """What the edge bounds: body size, connections per address, and every timeout (seconds).

    `max_body_bytes`: TorchServe's max_request_size (6,553,500 by default; every torchship handler's own
    limit is below it), so a larger body is refused (413) before it reaches TorchServe. Bodies stay in
    memory (the buffer is as large as the limit, and nginx sizes it to the Content-Length; a chunked body,
    which would take the whole buffer, is refused with 411): nothing a caller sends is written to disk.
    `upstream_read_s` is the longest pause between two chunks of TorchServe's answer: its
    default_response_timeout (120) and some.
    """

    max_body_bytes: int = 6_553_500
    connections_per_address: int = 64
    client_header_s: int = 10
    client_body_s: int = 30
    send_s: int = 60
    keepalive_s: int = 75
    keepalive_requests: int = 10_000
    upstream_connect_s: int = 5
    upstream_send_s: int = 60
    upstream_read_s: int = 130


@dataclass(frozen=True)
class Route:
    """A path the gateway forwards: its nginx location, the methods it allows, and whether it names a model.

    `match` is "~" for a regex `pattern`, "=" for an exact one. A route with `per_model` is checked
    against the tenant's models ($model is the pattern's capture).
    """

    name: str
    match: str
    pattern: str
    methods: tuple[str, ...]
    per_model: bool
    upstream_path: str = "$uri"  # the normalised path, which the pattern limited to safe characters

    @property
    def location(self) -> str:
        """The route's nginx `location` line (the pattern quoted: its {m,n} would open a block)."""
        if '"' in self.pattern or "\n" in self.pattern:
            raise ConfigError(f"route {self.name}: a pattern cannot hold a double quote or a newline")
        return f'location {self.match} "{self.pattern}"'


ROUTES: tuple[Route, ...] = (
    Route("predictions", "~", rf"^/predictions/{_MODEL}(?:/{_VERSION})?$", ("POST",), True),
    Route("explanations", "~", rf"^/explanations/{_MODEL}(?:/{_VERSION})?$", ("POST",), True),
    Route("v2-infer", "~", rf"^/v2/models/{_MODEL}/infer$", ("POST",), True),
    Route("ping", "=", "/ping", ("GET",), False, "/ping"),
)


@dataclass(frozen=True)
class Split:
    """A live rollout of `model`'s candidate `version` (torchship rollout --live).

    Of the requests to /predictions/MODEL (no version named), `canary` percent are answered by the
    candidate (a candidate's 5xx is answered by the default instead), and `shadow` percent of the rest are
    also sent to the candidate, whose answer nobody gets. The draw is per request, or per client
    (`X-Torchship-Client`, within a tenant) when the caller names one."""

    model: str
    version: str
    canary: float
    shadow: float
    owner: int = 0  # the pid of the rollout that set it: the keeper ends the split if that process is gone

    def __post_init__(self) -> None:
        from torchship.archiver.names import check_name, check_version

        check_name(self.model)
        check_version(self.version)
        for what, pct in (("canary", self.canary), ("shadow", self.shadow)):
            if not 0 <= pct <= 100:
                raise ConfigError(f"{what} is a percentage from 0 to 100, not {pct!r}")

    @property
    def shares(self) -> tuple[float, float]:
        """(canary, shadow) as shares of all the model's requests, in percent (the shadow's of the rest)."""
        return self.canary, (100 - self.canary) * self.shadow / 100


SHADOW_PATH = "/_torchship_shadow"  # the mirrored request to the candidate
SHADOWED_PATH = "/_torchship_shadowed"  # the default's answer to a request that is mirrored
CANARY_PATH = "/_torchship_canary"
SHADOW_READ_S = 30  # the longest a mirrored request waits for the candidate


@dataclass(frozen=True)
class GatewaySpec:
    """Everything the gateway's nginx.conf says: where it listens, its certificate, TorchServe, tenants, limits.

    `workdir` holds the pid file, logs, temp folders and the two included 0600 files.
    """

    workdir: Path
    listen: tuple[Listen, ...]
    certificates: Certificates
    upstream: Upstream
    tenants: tuple[Tenant, ...] = ()
    limits: Limits = field(default_factory=Limits)
    routes: tuple[Route, ...] = ROUTES
    worker_processes: int = 1
    splits: tuple[Split, ...] = ()

    @property
    def tenant_keys_path(self) -> Path:
        """The 0600 map of tenant keys nginx includes."""
        return self.workdir / "tenant-keys.conf"

    @property
    def upstream_token_path(self) -> Path:
        """The 0600 file holding TorchServe's inference token, which nginx includes."""
        return self.workdir / "upstream-token.conf"

    @property
    def access_log(self) -> Path:
        """The JSON access log: one line per request, with its tenant and status."""
        return self.workdir / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        """nginx's error log."""
        return self.workdir / "logs" / "error.log"

    @property
    def pid_file(self) -> Path:
        """The nginx master's pid file."""
        return self.workdir / "nginx.pid"


def _q(text: str) -> str:
    """An nginx string in double quotes; refused when it holds what nginx would read as syntax or a variable."""
    if re.search(r'["\\$;{}\n\r]', text):
        raise ConfigError(f"{text!r} holds characters the gateway's nginx config cannot take (\" \\ $ ; {{ }})")
    return f'"{text}"'


def _path(path: Path) -> str:
    return _q(str(path))


def _json_body(status: int, kind: str, message: str) -> str:
    body = json.dumps({"code": status, "type": kind, "message": message})
    if "'" in body or "$" in body or "\\" in body:
        raise ConfigError(f"an error message of the gateway cannot be written into nginx.conf: {message!r}")
    return f"'{body}'"


def _zone(rate: Rate) -> str:
    return f"rate_{rate.count}r_{rate.unit}_b{rate.burst}"


def _regex_literal(text: str) -> str:
    return re.sub(r"([.\-])", r"\\\1", text)


def render_tenant_keys(secrets: dict[str, str]) -> str:
    """The 0600 include that maps `Authorization: Bearer <key>` to its tenant ($tenant; "" for none)."""
    lines = [
        "# Written by torchship (keys create / revoke): tenant keys, secret. 0600; never edit, never copy.",
        "map $http_authorization $tenant {",
        '    default "";',
    ]
    for name, secret in sorted(secrets.items()):
        if not re.fullmatch(r"tsk_[0-9a-f]{64}", secret) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
            raise ConfigError(f"tenant {name!r} has a malformed key: revoke it and create it again")
        lines.append(f'    "Bearer {secret}" "{name}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_upstream_token(token: str | None) -> str:
    """The 0600 include that sets $torchserve_authorization: TorchServe's inference token, or nothing."""
    if token is not None and not re.fullmatch(r"[A-Za-z0-9_\-=+/]{1,256}", token):
        raise ConfigError("TorchServe's inference key has characters torchship does not expect; restart the server")
    value = f'"Bearer {token}"' if token else '""'
    return (
        "# Written by torchship: TorchServe's inference token, set on every request sent upstream. 0600.\n"
        f"map $host $torchserve_authorization {{\n    default {value};\n}}\n"
    )


def render_conf(spec: GatewaySpec) -> str:
    """nginx.conf for `spec` (see the module docstring for what it does and refuses)."""
    w = spec.workdir
    lim = spec.limits
    tenants = list(spec.tenants)
    rates = sorted({t.rate for t in tenants if t.rate is not None}, key=_zone)
    out: list[str] = [
        "# Written by torchship (torchship/gateway/nginx.py) at every gateway start and reload: edit nothing here.",
        f"worker_processes {max(1, spec.worker_processes)};",
        f"pid {_path(spec.pid_file)};",
        f"error_log {_path(spec.error_log)} warn;",
        "pcre_jit on;",
        f"worker_shutdown_timeout {lim.upstream_read_s + 20}s;  # a reload ends the old workers' streams by then",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        "    server_tokens off;",
        "    map_hash_bucket_size 128;  # a key's map entry (Bearer tsk_...) is 75 bytes",
        "    default_type application/json;  # the gateway's own answers; TorchServe's keep theirs",
        '    log_format torchship escape=json \'{"time":"$time_iso8601","tenant":"$tenant",'
        '"key":"$torchship_key","status":$status,"method":"$request_method","path":"$uri",'
        '"request_time":$request_time,"upstream_time":"$upstream_response_time",'
        '"bytes_in":$request_length,"bytes_out":$bytes_sent,"addr":"$remote_addr","request_id":"$request_id",'
        '"live":"$ts_live_model","arm":"$ts_arm","upstream_status":"$upstream_status"}\';',
        f"    client_body_temp_path {_path(w / 'tmp' / 'body')};",
        f"    proxy_temp_path {_path(w / 'tmp' / 'proxy')};",
        f"    fastcgi_temp_path {_path(w / 'tmp' / 'fastcgi')};",
        f"    uwsgi_temp_path {_path(w / 'tmp' / 'uwsgi')};",
        f"    scgi_temp_path {_path(w / 'tmp' / 'scgi')};",
        "",
        "    # who calls: $tenant from the caller's key (0600), and TorchServe's token (0600)",
        f"    include {_path(spec.tenant_keys_path)};",
        f"    include {_path(spec.upstream_token_path)};",
        "    map $http_authorization $torchship_key {",
        '        "" none;',
        "        default given;",
        "    }",
        "",
        "    # which models each tenant may call ($model comes from the route's location)",
        "    map $tenant $tenant_all_models {",
        "        default 0;",
    ]
    out += [f'        "{t.name}" 1;' for t in tenants if t.models is None]
    out += [
        "    }",
        '    map "$tenant_all_models:$tenant:$model" $tenant_may {',
        "        default 0;",
        '        "~^1:" 1;',
    ]
    for t in tenants:
        for model in t.models or ():
            out.append(f'        "~^0:{_regex_literal(t.name)}:{_regex_literal(model)}$" 1;')
    out += ["    }", "", "    # each tenant's rate: one zone per distinct rate and burst; no key, no count"]
    for rate in rates:
        zone = _zone(rate)
        out += [f"    map $tenant ${zone} {{", '        default "";']
        out += [f'        "{t.name}" "{t.name}";' for t in tenants if t.rate == rate]
        out += ["    }", f"    limit_req_zone ${zone} zone={zone}:1m rate={rate.nginx};"]
    out += ["    map $tenant $retry_after {", "        default 1;"]
    out += [f'        "{t.name}" {t.rate.retry_after};' for t in tenants if t.rate is not None]
    out += [
        "    }",
        "    # connections per address; the project's own key (torchship's bench, tune, rollout) is not counted",
        "    map $tenant $connection_key {",
        "        default $binary_remote_addr;",
        f'        "{OWNER}" "";',
        "    }",
        "    limit_conn_zone $connection_key zone=per_address:10m;",
        "    limit_req_status 429;",
        "    limit_conn_status 429;",
        "    limit_req_log_level warn;",
        "    limit_conn_log_level warn;",
        "",
        *_live_maps(spec.splits),
        f"    upstream {spec.upstream.name} {{",
    ]
    for s in spec.upstream.servers:
        host = f"[{s.host}]" if ":" in s.host else s.host
        out.append(f"        server {host}:{s.port} weight={s.weight} max_fails=0;")
    out += [
        f"        keepalive {spec.upstream.keepalive};",
        "        keepalive_requests 10000;",
        "        keepalive_timeout 60s;",
        "    }",
        "",
        "    server {",
    ]
    out += [f"        listen {listen} ssl;" for listen in spec.listen]
    out += [
        f"        ssl_certificate {_path(spec.certificates.cert)};",
        f"        ssl_certificate_key {_path(spec.certificates.key)};",
        "        ssl_protocols TLSv1.2 TLSv1.3;",
        f"        ssl_ciphers {CIPHERS};",
        "        ssl_prefer_server_ciphers off;",
        "        ssl_ecdh_curve X25519:prime256v1:secp384r1;",
        "        ssl_session_cache shared:torchship_tls:10m;",
        "        ssl_session_timeout 1h;",
        "        ssl_session_tickets off;",
        "",
        f"        access_log {_path(spec.access_log)} torchship;",
        "        log_subrequest on;  # a live rollout's mirrored requests are logged too (the others are not made)",
        f"        client_max_body_size {lim.max_body_bytes};",
        f"        client_body_buffer_size {lim.max_body_bytes};  # bodies stay in memory, never on disk",
        f"        client_header_timeout {lim.client_header_s}s;",
        f"        client_body_timeout {lim.client_body_s}s;",
        f"        send_timeout {lim.send_s}s;",
        f"        keepalive_timeout {lim.keepalive_s}s;",
        f"        keepalive_requests {lim.keepalive_requests};",
        "        reset_timedout_connection on;",
        f"        limit_conn per_address {lim.connections_per_address};",
        "",
        "        proxy_http_version 1.1;",
        "        proxy_pass_request_headers off;  # only the headers below reach TorchServe",
        "        proxy_set_header Host $proxy_host;",
        '        proxy_set_header Connection "";',
        "        proxy_set_header Authorization $torchserve_authorization;",
    ]
    out += [f"        proxy_set_header {name} {value};" for name, value in FORWARDED_HEADERS]
    out += [
        "        proxy_buffering off;  # streamed answers pass chunk by chunk",
        "        proxy_max_temp_file_size 0;",
        "        proxy_next_upstream off;  # a prediction is never sent twice behind the caller's back",
        f"        proxy_connect_timeout {lim.upstream_connect_s}s;",
        f"        proxy_send_timeout {lim.upstream_send_s}s;",
        f"        proxy_read_timeout {lim.upstream_read_s}s;",
        "",
        "        # a body must say its length: a chunked one would take a whole body buffer before its first byte",
        "        if ($http_transfer_encoding) {",
        "            return 411;",
        "        }",
        "",
        "        error_page 401 @unauthorized;",
        "        error_page 403 @forbidden;",
        "        error_page 404 @not_found;",
        "        error_page 405 @not_allowed;",
        "        error_page 411 @length_required;",
        "        error_page 413 @too_large;",
        "        error_page 429 @too_many;",
        "        error_page 502 504 @unreachable;",
        "",
    ]
    limit_lines = [
        f"            limit_req zone={_zone(r)}{f' burst={r.burst}' if r.burst else ''} nodelay;" for r in rates
    ]
    for route in spec.routes:
        methods = "|".join(route.methods)
        out += [
            f"        {route.location} {{  # {route.name}",
            '            if ($tenant = "") {',
            "                return 401;",
            "            }",
            f"            if ($request_method !~ ^({methods})$) {{",
            "                return 405;",
            "            }",
        ]
        if route.per_model:
            out += ["            if ($tenant_may != 1) {", "                return 403;", "            }"]
        if route.name == "predictions" and spec.splits:
            out += [
                '            if ($ts_arm = "canary") {  # a live rollout\'s candidate answers this one',
                f"                rewrite ^ {CANARY_PATH} last;",
                "            }",
                '            if ($ts_arm = "shadow") {  # the default answers, the candidate gets a copy',
                f"                rewrite ^ {SHADOWED_PATH} last;",
                "            }",
            ]
        out += limit_lines
        out += [f"            proxy_pass http://{spec.upstream.name}{route.upstream_path};", "        }"]
    if spec.splits:
        out += _live_locations(spec.upstream.name, limit_lines)
    max_mb = lim.max_body_bytes
    out += [
        "        location / {",
        '            if ($tenant = "") {',
        "                return 401;",
        "            }",
        "            return 404;",
        "        }",
        "        location @unauthorized {",
        "            add_header WWW-Authenticate 'Bearer realm=\"torchship\"' always;",
        "            return 401 "
        + _json_body(
            401,
            "Unauthorized",
            "no valid API key: send Authorization: Bearer <key> (torchship keys create NAME makes one)",
        )
        + ";",
        "        }",
        "        location @forbidden {",
        "            return 403 " + _json_body(403, "Forbidden", "this API key may not call this model") + ";",
        "        }",
        "        location @not_found {",
        "            return 404 "
        + _json_body(
            404,
            "NotFound",
            "the gateway serves POST /predictions/NAME[/VERSION], POST /explanations/NAME[/VERSION], "
            "POST /v2/models/NAME/infer and GET /ping only",
        )
        + ";",
        "        }",
        "        location @not_allowed {",
        "            return 405 " + _json_body(405, "MethodNotAllowed", "predictions are POST; ping is GET") + ";",
        "        }",
        "        location @length_required {",
        "            return 411 "
        + _json_body(411, "LengthRequired", "send the request body with a Content-Length, not chunked")
        + ";",
        "        }",
        "        location @too_large {",
        "            return 413 "
        + _json_body(413, "PayloadTooLarge", f"the request body is over {max_mb} bytes, the limit of the gateway")
        + ";",
        "        }",
        "        location @too_many {",
        "            add_header Retry-After $retry_after always;",
        "            return 429 "
        + _json_body(429, "TooManyRequests", "over the request rate or connection limit of this API key: retry later")
        + ";",
        "        }",
        "        location @unreachable {",
        "            return 502 "
        + _json_body(502, "BadGateway", "TorchServe does not answer behind the gateway: torchship serve status")
        + ";",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(out) + "\n"


def default_worker_processes() -> int:
    """nginx workers: one per two cores, at least 1 and at most 4.

    TorchServe's workers need the cores more: on 2 cores one nginx worker kept 0.85-0.90x of direct
    throughput at 16 callers where two kept 0.75-0.85x (benchmarks/bench_gateway.py). Each worker keeps its
    own keep-alive pool to TorchServe.
    """
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def _percent(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _live_maps(splits: tuple[Split, ...]) -> list[str]:
    """The http-level maps of the live rollouts: the model a request's rollout is of ($ts_live_model, from the
    request line, so the mirror's subrequest reads the same), the draw ($ts_arm: canary, shadow or none)
    and the candidate version ($ts_candidate). Defined with no rollout too: the access log names them."""
    out = [
        "    # live rollouts (torchship rollout --live): /predictions/MODEL with no version, drawn per request",
        "    # ($request_id, which the mirror's subrequest shares) or per client (X-Torchship-Client, per tenant)",
        "    map $request_uri $ts_live_model {",
        '        default "";',
    ]
    out += [f'        "~^/predictions/{_regex_literal(sp.model)}(?:\\?.*)?$" "{sp.model}";' for sp in splits]
    out += [
        "    }",
        '    map "$tenant:$http_x_torchship_client" $ts_split_key {',
        '        "~:$" $request_id;',
        '        default "$tenant:$http_x_torchship_client";',
        "    }",
    ]
    for i, sp in enumerate(splits):
        canary, shadow = sp.shares
        out.append(f'    split_clients "${{ts_split_key}}" $ts_draw_{i} {{')
        out += [f"        {_percent(canary)}% canary;"] if canary >= 0.01 else []
        out += [f"        {_percent(shadow)}% shadow;"] if shadow >= 0.01 else []
        out += ['        * "";', "    }"]
    out += ["    map $ts_live_model $ts_arm {", '        default "";']
    out += [f'        "{sp.model}" $ts_draw_{i};' for i, sp in enumerate(splits)]
    out += ["    }", "    map $ts_live_model $ts_candidate {", '        default "";']
    out += [f'        "{sp.model}" "{sp.version}";' for sp in splits]
    out += ["    }", ""]
    return out


def _live_locations(upstream: str, limit_lines: list[str]) -> list[str]:
    """The candidate's share (a 5xx of the candidate is answered by the default: no caller sees it) and the
    mirror (answered by the candidate when drawn, else 204 unlogged; either way its answer reaches no one)."""
    return [
        f"        location = {CANARY_PATH} {{  # the candidate's share of a live rollout",
        "            internal;",
        *limit_lines,
        "            proxy_intercept_errors on;",
        "            error_page 404 500 502 503 504 = @torchship_default;  # V gone, failing or busy",
        "            error_page 429 @too_many;",
        f"            proxy_pass http://{upstream}/predictions/$ts_live_model/$ts_candidate;",
        "        }",
        "        location @torchship_default {  # the candidate failed: the default answers instead",
        "            set $ts_default_path /predictions/$ts_live_model;",
        f"            proxy_pass http://{upstream}$ts_default_path;",
        "        }",
        f"        location = {SHADOWED_PATH} {{  # the default's answer to a request mirrored to the candidate",
        "            internal;",
        *limit_lines,
        "            keepalive_timeout 0;  # nginx holds a connection's next request until the mirror ends: none",
        f"            mirror {SHADOW_PATH};",
        "            mirror_request_body on;",
        "            set $ts_default_path /predictions/$ts_live_model;",
        f"            proxy_pass http://{upstream}$ts_default_path;",
        "        }",
        f"        location = {SHADOW_PATH} {{  # the mirror of a live rollout: its answer goes to no one",
        "            internal;",
        f"            proxy_read_timeout {SHADOW_READ_S}s;",
        f"            proxy_pass http://{upstream}/predictions/$ts_live_model/$ts_candidate;",
        "        }",
    ]
