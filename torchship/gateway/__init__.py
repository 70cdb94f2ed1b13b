"""The TLS gateway: nginx in front of a local TorchServe's inference API, owned by torchship.

`torchship serve start --tls` starts it (`Gateway.start`); tenants' API keys (`torchship keys create`)
limit who may call which model at what rate; `TorchServe.from_config` goes through it. See
docs/gateway.md.

- `tls`: the project's local CA and server certificate (or the user's own);
- `tenants`: tenant keys and their limits;
- `nginx`: the config, rendered from a `GatewaySpec`;
- `process`: start, reload, stop and status of nginx and its keeper;
- `keeper`: the process that follows TorchServe's inference token;
- `usage`: requests and errors per tenant from the JSON access log.
"""

from __future__ import annotations

from .nginx import GatewaySpec, Limits, Listen, Route, Upstream, UpstreamServer, render_conf
from .process import DEFAULT_LISTEN, Gateway, GatewayStatus
from .tenants import OWNER, Rate, Tenant, TenantStore
from .tls import Certificates
from .usage import TenantUsage

__all__ = [
    "Gateway",
    "GatewayStatus",
    "GatewaySpec",
    "Limits",
    "Listen",
    "Route",
    "Upstream",
    "UpstreamServer",
    "render_conf",
    "Rate",
    "Tenant",
    "TenantStore",
    "TenantUsage",
    "Certificates",
    "OWNER",
    "DEFAULT_LISTEN",
]
