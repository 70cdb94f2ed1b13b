"""Sampled capture of what production sends and what the model answered, written by the worker.

Where: ``$TORCHSHIP_CAPTURE_DIR/<model>/<version>/`` (the servers torchship starts set it to the
project's ``.torchship/capture``). Without the variable nothing is ever captured.

Control: ``settings.json`` in that folder, written by ``torchship capture`` and by ``apply``::

    {"sample": 0.1, "redact": {"user": "hash", "email": "drop"},
     "max_bytes": 67108864, "file_bytes": 8388608, "drift_every_s": 30}

No file, or ``sample`` 0: nothing is captured. The worker reads the file again when it changes
(it looks at most once a second), so turning capture on, off or to another rate needs no restart.
While it captures, each worker measures drift on the last DRIFT_WINDOW records every ``drift_every_s``
seconds (0: never) for the metrics port (torchship_drift.DriftGauge).

Records: ``capture-<time>-<pid>.jsonl``, one JSON object per sampled request::

    {"time": <unix s>, "request_id": ..., "model": ..., "version": ..., "status": 200,
     "worker_ms": <the batch's time in the worker>, "batch": <its size>, "input": ..., "answer": ...,
     "signals": {...}}

``input`` is the request's decoded body (a JSON value; raw bytes as {"base64": ...}; an .npy array
as {"npy": shape, "data": [...]}), ``answer`` the JSON the caller got (or {"base64": ...}),
``signals`` what drift measures of the request: ``"input"`` when drift derives it from ``input`` where it
is measured (the example models, `torchship_signals.from_input`), else what the model's handler derives
from the input (its ``signals`` method).
No header is ever recorded (the bearer token travels in one), only the request id. Fields named in
``redact`` (top-level keys of a JSON object input, and of a list of such objects) are replaced by
``"hmac:<16 hex>"`` (``hash``: an HMAC-SHA256 under a random key kept in the capture folder, mode 0600,
so the same user maps to the same value without a dictionary attack on the raw id) or removed
(``drop``). A rule on ``body`` also covers a body that is not JSON (an image, an .npy array): recorded
as the HMAC of its bytes, or as ``{"redacted_bytes": N}``. Under any rule, a request that failed to read
is recorded by its size alone (``{"redacted_bytes": N}``), and a handler whose signals reveal its input
(``signals_reveal_input``) records none of its own for a request a rule touched.

Bounded: an input or answer over ``MAX_FIELD_BYTES`` is replaced by its size; a file is closed at
``file_bytes`` and a new one begun; the oldest files are removed while the folder holds more than
``max_bytes``. A capture that fails (a full disk) is logged once and never fails a request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import time
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CAPTURE_ENV = "TORCHSHIP_CAPTURE_DIR"
SETTINGS = "settings.json"
SALT = ".redact-key"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_FILE_BYTES = 8 * 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024
DEFAULT_DRIFT_EVERY_S = 30  # how often a worker measures drift for the metric (torchship_drift.DriftGauge)
DRIFT_WINDOW = 500  # the captured requests it is measured on (`torchship drift`'s default window)
CHECK_EVERY_S = 1.0
REDACTIONS = ("hash", "drop")
BODY = "body"  # a redact rule of this name also covers a body that is not JSON (an image, an .npy array)


def folder(root: str | os.PathLike[str], model: str, version: str) -> Path:
    """The capture folder of one model version."""
    return Path(root) / model / version


def check_settings(settings: Any) -> dict[str, Any]:
    """Settings as the worker applies them; ValueError naming what is wrong (the CLI checks the same)."""
    if not isinstance(settings, dict):
        raise ValueError("capture settings are a JSON object")
    unknown = set(settings) - {"sample", "redact", "max_bytes", "file_bytes", "drift_every_s"}
    if unknown:
        raise ValueError(f"unknown capture settings: {', '.join(sorted(unknown))}")
    sample = settings.get("sample", 0)
    if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0 <= sample <= 1:
        raise ValueError(f"sample is a fraction from 0 to 1, not {sample!r}")
    redact = settings.get("redact") or {}
    if not isinstance(redact, dict) or not all(isinstance(k, str) and v in REDACTIONS for k, v in redact.items()):
        raise ValueError(f'redact maps field names to "hash" or "drop", not {redact!r}')
    sizes: dict[str, int] = {}
    for key, least in (("max_bytes", 4096), ("file_bytes", 1024)):
        # a file is at most a quarter of the bound unless told otherwise, so rotation keeps history
        default = DEFAULT_MAX_BYTES if key == "max_bytes" else min(DEFAULT_FILE_BYTES, sizes["max_bytes"] // 4)
        value = settings.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{key} is a whole number of bytes, at least {least}, not {value!r}")
        sizes[key] = value
    if sizes["file_bytes"] > sizes["max_bytes"]:
        raise ValueError("file_bytes is larger than max_bytes")
    every = settings.get("drift_every_s", DEFAULT_DRIFT_EVERY_S)
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not (every == 0 or 1 <= every <= 86400):
        raise ValueError(f"drift_every_s is 0 (no drift metric) or 1 to 86400 seconds, not {every!r}")
    return {"sample": float(sample), "redact": dict(redact), **sizes, "drift_every_s": every}


def jsonable(value: Any) -> Any:
    """A request body as JSON: JSON values as they are, bytes as base64, an array as its shape and values."""
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "tolist"):
        return {"npy": list(shape), "data": value.tolist()}
    return {"type": type(value).__name__}


_OPENERS = (b"{", b"[")  # how a JSON object or list begins
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_INPUT = b'"input"'  # the signals of a handler whose drift signals are its input (see the base handler)


def signals_json(signals: dict[str, Any]) -> bytes:
    """A request's drift signals as they go into its record (compact JSON; NaN refused)."""
    return _ENCODER.encode(signals).encode("ascii")


def bounded_json(text: str) -> str:
    """JSON text as it goes into a record: itself, or its size when it is over MAX_FIELD_BYTES."""
    return text if len(text) <= MAX_FIELD_BYTES else f'{{"omitted_bytes":{len(text)}}}'


def to_json(value: Any) -> str:
    """A value's compact JSON for a record (bounded); what JSON cannot hold is named by its type."""
    try:
        return bounded_json(_ENCODER.encode(jsonable(value)))
    except (TypeError, ValueError):
        return f'{{"unencodable":{json.dumps(type(value).__name__)}}}'


def json_bytes(value: Any) -> bytes:
    """`to_json` as the UTF-8 bytes a record is written in."""
    return to_json(value).encode("utf-8")


def as_sent(raw: Any) -> bytes | bytearray | None:
    """`raw` itself (or its size, when over MAX_FIELD_BYTES) when it can go into a record as it is: the
    bytes of a JSON object or list on one line of ASCII (what every client sends a JSON body as; the
    handler has parsed it already). None otherwise: it is encoded from its decoded value instead.

    A bytearray (how a worker receives a body) is returned as it is, not copied: a record is formatted
    with it before the batch returns."""
    if type(raw) is not bytes and type(raw) is not bytearray:
        return None
    if not raw.startswith(_OPENERS):
        return None
    if len(raw) > MAX_FIELD_BYTES:  # recorded by its size, as any field over the bound (and never scanned)
        return b'{"omitted_bytes":%d}' % len(raw)
    if raw.isascii() and 10 not in raw and 13 not in raw:  # no "\n" nor "\r" (a byte's search: 10x a substring's)
        return raw
    return None


def base64_json(data: bytes) -> bytes:
    """Bytes as record JSON, {"base64": ...}, as `json_bytes` gives them (its size when the JSON would be over
    MAX_FIELD_BYTES), without building and encoding the dict."""
    encoded = base64.b64encode(data)
    if len(encoded) + 13 > MAX_FIELD_BYTES:
        return b'{"omitted_bytes":%d}' % (len(encoded) + 13)
    return b'{"base64":"' + encoded + b'"}'


def answer_bytes(result: Any) -> bytes:
    """The answer a caller got, as record JSON: a handler's compact JSON answer goes in as it is."""
    fast = as_sent(result)
    return fast if fast is not None else json_bytes(result)


def _alive(pid: str) -> bool:
    """Whether process `pid` (as a capture file names it) is running."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another account's: it exists
        return True
    return True


def _str_json(value: Any) -> bytes:
    """A JSON string (ASCII-escaped) as bytes."""
    return encode_basestring_ascii(value if isinstance(value, str) else str(value)).encode("ascii")


class Capture:
    """One worker's capture of one model version: the settings, the sampling and the files."""

    def __init__(self, root: str | os.PathLike[str] | None, model: str, version: str) -> None:
        self.model, self.version = model, version
        self.dir = folder(root, model, version) if root else None
        self.settings: dict[str, Any] = {"sample": 0.0}
        self._seen: tuple[int, int] | None = None  # the settings file's (mtime_ns, size) last read
        self._checked = float("-inf")
        self._fd: int | None = None  # the open capture file: appended to with one write() per batch
        self._size = 0  # its bytes
        self._path: Path | None = None
        self._key: bytes | None = None
        self._failed = False
        self._head = b'{"model":%s,"version":%s' % (_str_json(model), _str_json(version))

    # ------------------------------------------------------------ settings

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.dir is None or now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        path = self.dir / SETTINGS
        try:
            st = path.stat()
        except OSError:
            if self._seen is not None:
                self._seen, self.settings = None, {"sample": 0.0}
                self._close()
            return
        if self._seen == (st.st_mtime_ns, st.st_size):
            return
        self._seen = (st.st_mtime_ns, st.st_size)
        try:
            self.settings = check_settings(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            logger.warning("capture of %s %s is off: %s: %s", self.model, self.version, path, exc)
            self.settings = {"sample": 0.0}
        if not self.settings["sample"]:
            self._close()

    def sampled(self, n: int) -> list[int]:
        """Which of a batch's `n` requests to capture (indices)."""
        self._refresh()
        rate = self.settings["sample"]
        if not rate:
            return []
        if rate >= 1:
            return list(range(n))
        return [i for i in range(n) if random.random() < rate]

    # ------------------------------------------------------------ records

    def redact(self, value: Any) -> Any:
        """`value` with the fields named in the settings hashed or dropped (top-level keys of an object,
        and of the objects of a list)."""
        rules = self.settings.get("redact") or {}
        if not rules:
            return value
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {}
        for key, v in value.items():
            rule = rules.get(key)
            if rule == "drop":
                continue
            out[key] = self._hash(v) if rule == "hash" else v
        return out

    def redacts(self, body: Any, raw: Any, fields: Any = True) -> bool:
        """Whether a redact rule touches this request: a field it names is in the body (or in an object of a
        list body; only `fields`, when they are named), or a `body` rule and the body is binary (an image,
        an .npy array, v2 binary tensors: `raw` None)."""
        rules = self.settings.get("redact")
        if not rules:
            return False
        if BODY in rules and (raw is None or type(body) is bytes or hasattr(body, "shape")):
            return True
        named = set(rules) if fields is True else set(rules) & set(fields)
        items = body if isinstance(body, list) else [body]
        return any(isinstance(item, dict) and any(key in named for key in item) for item in items)

    def _hash(self, value: Any) -> str:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        return "hmac:" + hmac.new(self._redact_key_bytes(), text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]

    def _redact_key_bytes(self) -> bytes:
        if self._key is None:
            self._key = self._redact_key()
        return self._key

    def _redact_key(self) -> bytes:
        """The folder's redaction key: made once (0600), the same for every worker of the version."""
        assert self.dir is not None
        path = self.dir / SALT
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            for _ in range(50):  # another worker is writing it
                key = path.read_bytes()
                if len(key) == 32:
                    return key
                time.sleep(0.01)
            raise OSError(f"{path} is not a 32-byte key") from None
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key

    def input_bytes(self, body: Any, raw: Any = None) -> bytes:
        """A request's body as record JSON: `raw`, the JSON it was sent as, when it can go in as it is
        (one line of ASCII, no field to redact), else the decoded `body` encoded (redacted as the
        settings say)."""
        rules = self.settings.get("redact")
        if not rules:
            fast = as_sent(raw)
            if fast is not None:
                return fast
        if type(body) is bytes or hasattr(body, "shape"):  # a binary body (an image, an .npy array)
            rule = rules.get(BODY) if rules else None
            if rule == "drop":
                return b'{"redacted_bytes":%d}' % len(raw if isinstance(raw, (bytes, bytearray)) else b"")
            if rule == "hash":
                data = body if type(body) is bytes else bytes(raw) if isinstance(raw, (bytes, bytearray)) else b""
                return _str_json("hmac:" + hmac.new(self._redact_key_bytes(), data, hashlib.sha256).hexdigest()[:16])
            if type(body) is bytes:
                return base64_json(body)  # as it is, without building and encoding a dict
        return json_bytes(self.redact(body))

    def batch_head(self, now: float, worker_ms: float, size: int) -> bytes:
        """What the records of one batch share: model, version, time, the batch's time in the worker, its size."""
        return self._head + b',"time":%.3f,"worker_ms":%.3f,"batch":%d' % (now, worker_ms, size)

    @staticmethod
    def line(
        head: bytes,
        request_id: Any,
        status: int,
        body: bytes,
        answer: bytes,
        signals: Any = None,
        gateway_id: str | None = None,
    ) -> bytes:
        """One record: `head` (batch_head), then this request's fields; `body` and `answer` are record
        JSON already (input_bytes, answer_bytes), so nothing is decoded and encoded again. `signals`: a
        dict, "input", or a dict's `signals_json` already (a handler that works them out ahead of time)."""
        more = b""
        if signals:
            if type(signals) is not bytes:
                signals = _INPUT if signals == "input" else signals_json(signals)
            more = b',"signals":' + signals
        if gateway_id:
            more += b',"gateway_id":' + _str_json(gateway_id)
        return b'%s,"request_id":%s,"status":%d%s,"input":%s,"answer":%s}\n' % (
            head,
            b"null" if request_id is None else _str_json(request_id),
            status,
            more,
            body,
            answer,
        )

    def write(self, lines: list[bytes]) -> None:
        """Append a batch's records (`line`); never raises (a failed capture is logged once)."""
        if not lines or self.dir is None:
            return
        try:
            self._write(b"".join(lines))
            self._failed = False
        except Exception as exc:  # noqa: BLE001 - capture must never fail a request
            if not self._failed:
                logger.warning("capture of %s %s failed: %s", self.model, self.version, exc)
            self._failed = True
            self._close()

    def _write(self, data: bytes) -> None:
        assert self.dir is not None
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            self._close()  # removed (by hand: workers never remove a live worker's file): begin a new one
        if self._fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            self._path = self.dir / f"capture-{stamp}-{time.time_ns() % 10**9:09d}-{os.getpid()}.jsonl"
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._size = 0
        view = memoryview(data)
        while view:  # one system call, unless the kernel takes part of it (a signal, a full disk raises)
            written = os.write(self._fd, view)
            view = view[written:]
            self._size += written
        if self._size >= self.settings["file_bytes"]:
            self._close()
            self._prune()  # on rotation only: a directory listing per batch would cost more than the capture

    def _prune(self) -> None:
        """Remove the oldest capture files while the folder holds more than max_bytes; never the file a
        live worker of this version is writing (its newest), so no worker appends to a removed file."""
        assert self.dir is not None
        files = []
        newest: dict[str, str] = {}  # each writer's pid -> the name of its newest file
        for p in self.dir.glob("capture-*.jsonl"):
            try:
                st = p.stat()
            except OSError:
                continue
            pid = p.stem.rsplit("-", 1)[-1]
            files.append((p.name, st.st_size, p, pid))
            newest[pid] = max(newest.get(pid, ""), p.name)  # names sort in time order
        total = sum(size for _, size, _, _ in files)
        for name, size, p, pid in sorted(files):
            if total <= self.settings["max_bytes"]:
                break
            if p == self._path or (name == newest[pid] and _alive(pid)):
                continue
            p.unlink(missing_ok=True)
            total -= size

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._path = None, None
