"""Reading and writing TorchServe's config.properties, and where a project keeps its things."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from torchship.sdk.errors import ConfigError

__all__ = [
    "ServerConfig",
    "GatewayInfo",
    "GATEWAY_STATE_FILE",
    "ProjectPaths",
    "read_properties",
    "write_properties",
    "java_regex_literal",
    "DEFAULT_INFERENCE_URL",
    "DEFAULT_MANAGEMENT_URL",
    "DEFAULT_METRICS_URL",
]

# TorchServe's own defaults when a config names no address (and the client's when given none)
DEFAULT_INFERENCE_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"
DEFAULT_MAX_REQUEST_SIZE = 6_553_500  # TorchServe's default max_request_size
DEFAULT_METRICS_URL = "http://127.0.0.1:8082"
# what a running TLS gateway writes into its working folder (torchship.gateway), beside the server's
GATEWAY_STATE_FILE = "state.json"


def read_properties(path: Path) -> dict[str, str]:
    """Parse a Java .properties file the way java.util.Properties does, for the parts we use.

    Those are `#`/`!` comments, `=`/`:` separators, backslash escapes and line continuations.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    props: dict[str, str] = {}
    logical = ""
    for raw in lines:
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        # an odd number of trailing backslashes continues the line
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            logical += line[:-1]
            continue
        logical += line
        key, value = _split_property(logical)
        props[key] = value
        logical = ""
    if logical:
        key, value = _split_property(logical)
        props[key] = value
    return props


def _split_property(line: str) -> tuple[str, str]:
    match = re.match(r"((?:\\.|[^=:\s\\])*)\s*[=:\s]\s*(.*)$", line)
    if not match:
        return _unescape(line.strip()), ""
    return _unescape(match.group(1)), _unescape(match.group(2).rstrip())


def _unescape(text: str) -> str:
    table = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
    return re.sub(r"\\(.)", lambda m: table.get(m.group(1), m.group(1)), text)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def write_properties(path: Path, props: dict[str, str], header: str = "") -> None:
    """Write `props` as a .properties file, with `header` as comment lines."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={_escape(value)}" for key, value in props.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def java_regex_literal(text: str) -> str:
    """A Java regex that matches `text` literally (\\Q...\\E quoting)."""
    return "\\Q" + text.replace("\\E", "\\E\\\\E\\Q") + "\\E"


@dataclass(frozen=True)
class ServerConfig:
    """The parts of a TorchServe config that a client and a local server need."""

    path: Path
    properties: dict[str, str]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ServerConfig:
        """Read a config file; ConfigError when it is missing."""
        path = Path(path).resolve()
        if not path.is_file():
            raise ConfigError(missing_config_message(path))
        return cls(path, read_properties(path))

    def get(self, key: str, default: str | None = None) -> str | None:
        """Return a property of the config, or `default`."""
        return self.properties.get(key, default)

    @property
    def inference_url(self) -> str:
        """The inference API's address (TorchServe's default when the config names none)."""
        return _normalise_url(self.get("inference_address", DEFAULT_INFERENCE_URL))

    @property
    def management_url(self) -> str:
        """The management API's address (TorchServe's default when the config names none)."""
        return _normalise_url(self.get("management_address", DEFAULT_MANAGEMENT_URL))

    @property
    def metrics_url(self) -> str:
        """The metrics API's address (TorchServe's default when the config names none)."""
        return _normalise_url(self.get("metrics_address", DEFAULT_METRICS_URL))

    @property
    def max_request_size(self) -> int:
        """The largest request body the frontend accepts, in bytes (TorchServe's default: 6,553,500)."""
        value = (self.get("max_request_size") or "").strip()
        return int(value) if value.isdigit() else DEFAULT_MAX_REQUEST_SIZE

    @property
    def model_store(self) -> Path:
        """The model store, relative paths taken from the config file's folder."""
        store = Path(self.properties.get("model_store", "model_store"))
        return store if store.is_absolute() else (self.path.parent / store).resolve()

    def listen_addresses(self) -> dict[str, tuple[str, int]]:
        """Every listener this config opens, as (host, port)."""
        out = {}
        for name in ("inference", "management", "metrics"):
            parts = urlsplit(getattr(self, f"{name}_url"))
            out[name] = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        for name, port in (("grpc_inference", "7070"), ("grpc_management", "7071")):
            out[name] = (self.get(f"{name}_address", "0.0.0.0") or "", int(self.get(f"{name}_port", port) or port))
        return out


@dataclass(frozen=True)
class GatewayInfo:
    """What a client needs of the TLS gateway in front of a local server: its URL, CA, and key file.

    The CA is the one to pin; the key file holds the key to send (the project's own tenant key). A
    gateway started with `torchship serve start --tls` writes `state.json` into its working folder
    (`gateway/` beside the server's `server/` folder) and removes it when it stops.
    """

    url: str
    ca_file: Path | None
    key_file: Path
    pid: int

    @classmethod
    def for_server(cls, server_workdir: str | os.PathLike[str]) -> GatewayInfo | None:
        """The gateway of the server whose working folder this is, when one runs; else None.

        It runs when its state file names this server and its nginx master is alive: a state file
        left by a gateway that died is ignored (the client then talks to TorchServe directly).
        """
        workdir = Path(server_workdir).resolve()
        path = workdir.parent / "gateway" / GATEWAY_STATE_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if Path(raw["server"]).resolve() != workdir:
                return None
            pid = int(Path(raw["pid_file"]).read_text().split()[0])
            ca = Path(raw["ca_file"]) if raw.get("ca_file") else None
            info = cls(str(raw["url"]), ca, Path(raw["key_file"]), pid)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        return info if _alive(pid, b"nginx") else None


def _alive(pid: int, mark: bytes) -> bool:
    """Whether process `pid` runs and (where /proc tells) its command line holds `mark`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another account's: it exists
    try:
        return mark in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: existing is all we can know


def missing_config_message(path: Path) -> str:
    """The error message for a missing config file (a project's config.properties comes from `torchship init`)."""
    if path.name == "config.properties":
        return f"no config.properties in {path.parent}: run `torchship init` to make a project here, or cd into one"
    return f"config file not found: {path}"


def _normalise_url(url: str | None) -> str:
    if not url:
        raise ConfigError("an address in the config is empty")
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


@dataclass(frozen=True)
class ProjectPaths:
    """Where a torchship project keeps its config, checkpoints, archives and server state.

    `torchship.Project` is the object that works on them.

    The root is $TORCHSHIP_HOME, else the nearest folder at or above the current one that holds
    config.properties, else the current folder.
    """

    root: Path

    @classmethod
    def find(cls, start: Path | None = None) -> ProjectPaths:
        """Return the project around `start` (default: the current folder); see the class docstring."""
        env = os.environ.get("TORCHSHIP_HOME")
        if env:
            return cls(Path(env).resolve())
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "config.properties").is_file():
                return cls(folder)
        return cls(here)

    @property
    def config_path(self) -> Path:
        """The project's TorchServe config (`config.properties`)."""
        return self.root / "config.properties"

    @property
    def project_file(self) -> Path:
        """The project file that records the project's own models (`torchship.yaml`; see torchship.projectfile)."""
        return self.root / "torchship.yaml"

    @property
    def state_dir(self) -> Path:
        """Where torchship keeps its state (`.torchship/`)."""
        return self.root / ".torchship"

    @property
    def server_dir(self) -> Path:
        """The local server's working folder (`.torchship/server/`)."""
        return self.state_dir / "server"

    @property
    def key_dir(self) -> Path:
        """The signing keys (`.torchship/keys/`)."""
        return self.state_dir / "keys"

    @property
    def gateway_dir(self) -> Path:
        """The TLS gateway's working folder (`.torchship/gateway/`; torchship.gateway)."""
        return self.state_dir / "gateway"

    @property
    def tls_dir(self) -> Path:
        """The gateway's local CA and server certificate (`.torchship/tls/`)."""
        return self.state_dir / "tls"

    @property
    def capture_dir(self) -> Path:
        """Sampled requests and answers per model version (`.torchship/capture/`; torchship.ops.capture)."""
        return self.state_dir / "capture"

    @property
    def checkpoints(self) -> Path:
        """Where training runs are written (`checkpoints/`)."""
        return self.root / "checkpoints"

    @property
    def model_store(self) -> Path:
        """The model store: the config's `model_store`, else `model_store/`."""
        if self.config_path.is_file():
            return ServerConfig.load(self.config_path).model_store
        return self.root / "model_store"
