"""Every error torchship raises, and the one function that turns a TorchServe answer into one.

Catch ``TorchServeError`` to catch everything::

    TorchServeError
    ├── APIError(status, type, message, url)     the server answered with an error
    │   ├── BadRequest                  400: the request (or one item of a batch) is invalid
    │   ├── Unauthorized                400 InvalidKeyException: missing, wrong or expired token
    │   ├── Forbidden                   403: e.g. unregistering the default version
    │   ├── ModelNotFound               404: unknown model, version or archive
    │   ├── ModelAPIDisabled            405: register/unregister with enable_model_api off
    │   ├── ModelAlreadyExists          409: that name and version are registered already
    │   ├── PayloadTooLarge             413: body over max_request_size
    │   └── ServerError                 5xx
    │       ├── WorkerDied              500/507 "Worker died": the worker crashed or timed out
    │       └── ServiceUnavailable      503: no worker, full queue, or the handler raised
    ├── BadInput (also a ValueError)    the caller's input is invalid: a name, an option, a file
    │   └── InvalidName                 a model name or version outside the one rule (archiver.names)
    ├── ServerUnreachable               nothing answers at that address
    ├── ReadinessTimeout                a model or server did not become ready in time
    ├── ConfigError                     config.properties or the key file is missing or wrong
    ├── ServerStartError                a local server failed to start or stop
    ├── ArchiveError                    packaging failed or would overwrite an archive
    ├── VerificationError               an archive failed verification
    ├── RolloutFailed                   a guarded rollout was rejected at a gate
    ├── DriftDetected                   live traffic drifted from the training reference (torchship drift)
    ├── LoadGeneratorError              the load generator (wrk) failed or is missing
    └── TrainingError                   a training run cannot start or failed

Messages say what happened and what to do about it. Keys never appear in them.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

# the root and the errors of the layers below torchship live with those layers (they never import
# torchship); they are re-exported here, so this module names every error
from torchship.archiver.errors import ArchiveError, BadInput, TorchServeError, VerificationError
from torchship.train.errors import TrainingError

if TYPE_CHECKING:
    from torchship.sdk.logs import Cause

__all__ = [
    "TorchServeError",
    "APIError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "ModelNotFound",
    "ModelAPIDisabled",
    "ModelAlreadyExists",
    "PayloadTooLarge",
    "ServerError",
    "WorkerDied",
    "ServiceUnavailable",
    "ServerUnreachable",
    "BadInput",
    "ReadinessTimeout",
    "ConfigError",
    "ServerStartError",
    "ArchiveError",
    "VerificationError",
    "TrainingError",
    "RolloutFailed",
    "DriftDetected",
    "LoadGeneratorError",
    "error_from_response",
]


class APIError(TorchServeError):
    """TorchServe answered with an error status."""

    def __init__(self, status: int, type: str, message: str, url: str = "") -> None:
        self.status = status
        self.type = type
        self.message = message
        self.url = url
        super().__init__(self._text())

    def _text(self) -> str:
        where = f" ({self.url})" if self.url else ""
        hint = self.hint()
        return f"{self.status} {self.type}: {self.message}{where}" + (f". {hint}" if hint else "")

    def hint(self) -> str:
        """What to do about it; empty when the server's message says enough."""
        return ""

    def to_dict(self) -> dict[str, Any]:
        """Return the error as TorchServe writes one: code, type and message."""
        return {"code": self.status, "type": self.type, "message": self.message}


class BadRequest(APIError):
    """400: the request, or one item of a batch, is invalid."""


class Unauthorized(APIError):
    """A missing, wrong or expired token (TorchServe answers 400 InvalidKeyException)."""

    def hint(self) -> str:
        """Say to check that the key file belongs to this server."""
        return (
            "The token was missing, wrong or expired: check that the key file belongs to the "
            "server at this address (torchship reads .torchship/server/key_file.json)"
        )


class Forbidden(APIError):
    """403: refused, e.g. unregistering the default version."""

    def hint(self) -> str:
        """Say to set another default first, when the default version was refused."""
        if "default" in self.message.lower():
            return "Set another version as default first (torchship set-default NAME VERSION)"
        return ""


class ModelNotFound(APIError):
    """404: unknown model, version or archive."""


class ModelAPIDisabled(APIError):
    """405: register or unregister while enable_model_api is off."""

    def hint(self) -> str:
        """Say how to enable the model API."""
        return "Model API is disabled: set enable_model_api=true in config.properties"


class ModelAlreadyExists(APIError):
    """409: that name and version are registered already."""

    def hint(self) -> str:
        """Say to use another version or unregister this one."""
        return "Use another version, or unregister this one first"


_EMPTY_413 = "request body too large"  # what an empty 413 (the frontend's own) is said to mean


class PayloadTooLarge(APIError):
    """413: the request body is over the server's max_request_size."""

    def hint(self) -> str:
        """Say what to do when the server gave no reason (torchship's own messages do)."""
        if self.message == _EMPTY_413:  # nothing more was said
            return "The body is over the server's max_request_size: send less, or raise it"
        return ""  # torchship's messages (the client's, each handler's) say what the limit is


class ServerError(APIError):
    """5xx: the server failed.

    `cause`: why the worker failed (its exception line, the log file and line), when the client
    can read the server's logs (a local server) and found it; else None.
    """

    cause: Cause | None = None

    def with_cause(self, cause: Cause | None) -> ServerError:
        """This error again with the worker's failure attached: its message then ends with it."""
        if cause is None:
            return self
        again = type(self)(self.status, self.type, self.message, self.url)
        again.cause = cause
        again.args = (again._text(),)
        return again

    def _text(self) -> str:
        if self.cause is None:
            return super()._text()
        where = f" ({self.url})" if self.url else ""
        return f"{self.status} {self.type}: {self.message}{where}: the worker failed with {self.cause}"


class WorkerDied(ServerError):
    """The worker crashed or overran response_timeout (500, or 507 when it was killed)."""

    def hint(self) -> str:
        """Point at the server's model log."""
        return "The worker crashed or overran response_timeout; see the server's model_log.log"


class ServiceUnavailable(ServerError):
    """503: no worker could take the request (none running, queue full, or the handler failed)."""

    def hint(self) -> str:
        """Say why no worker took the request."""
        return "No worker could take the request (none running, queue full, or the handler failed)"


class ServerUnreachable(TorchServeError):
    """Nothing answered at the address."""


class ReadinessTimeout(TorchServeError):
    """A server or model did not become ready in time."""


class ConfigError(TorchServeError):
    """A configuration or key file is missing or invalid."""


class ServerStartError(TorchServeError):
    """A local TorchServe failed to start or to stop."""


class RolloutFailed(TorchServeError):
    """A guarded rollout was rejected at a gate; the previous default keeps serving."""


class DriftDetected(TorchServeError):
    """A version's captured traffic drifted from its training reference (`torchship drift`: exit 13)."""


class LoadGeneratorError(TorchServeError):
    """The load generator of bench or tune (wrk) failed, timed out, or is not installed."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    403: Forbidden,
    404: ModelNotFound,
    405: ModelAPIDisabled,
    409: ModelAlreadyExists,
    413: PayloadTooLarge,
    503: ServiceUnavailable,
}

# TorchServe's own names for what it answers; used when the status alone is ambiguous.
_BY_TYPE: dict[str, type[APIError]] = {
    "InvalidKeyException": Unauthorized,
    "ModelNotFoundException": ModelNotFound,
    "MethodNotAllowedException": ModelAPIDisabled,
    "ConflictStatusException": ModelAlreadyExists,
}

_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    500: "InternalServerError",
    503: "ServiceUnavailable",
    507: "InsufficientStorage",
}


def error_from_response(status: int, body: bytes | str | None, url: str = "") -> APIError:
    """Map an error answer to the matching APIError.

    TorchServe's errors are ``{"code", "type", "message"}``; torchship's handlers answer a bad
    item in the same shape. Empty, HTML or otherwise non-JSON bodies still give a useful error.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else (body or "")
    err_type = _REASONS.get(status, f"HTTP{status}")
    message = ""
    try:
        parsed = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and ("message" in parsed or "type" in parsed):
        err_type = str(parsed.get("type") or err_type)
        message = str(parsed.get("message") or "")
    elif parsed is None and text.strip():
        message = _first_line_of(text)
    if not message:
        message = {413: _EMPTY_413}.get(status, "no details in the answer")

    if err_type in _BY_TYPE:
        cls: type[APIError] = _BY_TYPE[err_type]
    elif status >= 500 and "worker died" in message.lower():
        cls = WorkerDied  # TorchServe answers it with 500, and with 507 when a worker is killed
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIError
    return cls(status, err_type, message, url)


def _first_line_of(text: str, limit: int = 200) -> str:
    """A readable line out of a non-JSON body (HTML error pages included)."""
    plain = re.sub(r"<[^>]+>", " ", text)
    plain = " ".join(plain.split())
    return plain[:limit]
