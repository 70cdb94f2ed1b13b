"""A local TorchServe's log files, read: one model's lines, and why its worker died.

TorchServe writes two files into its logs folder (see log4j2.xml): `ts_log.log`, the frontend
(models loaded, worker restarts, warnings), and `model_log.log`, everything the workers print
(stdout as INFO, stderr as WARN, tracebacks included). Each line reads

    2026-11-30T11:38:28,702 [INFO ] W-9000-mlp_1.0-stdout MODEL_LOG - <what the worker printed>

where the thread `W-<port>-<model>_<version>[-stdout|-stderr]` names the worker and so the model
version. A Java stack trace continues a line without that prefix: such lines belong to the line
before them.

`ServerLogs.cause` finds why a model's worker failed since a `mark`: the exception line of its last
traceback. When Python chains exceptions ("During handling of the above exception ...") the first
one is the cause: TorchServe's model loader, failing to import a handler, tries a second import
whose error (`No module named 'ts.torch_handler.<handler>'`) hides the real one.

Keys never leave this module: the server's current keys (from its key file) and anything that
reads as a bearer token are masked in every line it returns.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerLogs", "LogLine", "Cause", "LOG_FILES"]

LOG_FILES = ("ts_log.log", "model_log.log")
MASK = "<redacted>"
_LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[,.]\d+) \[(?P<level>\w+) *\] (?P<thread>\S+) \S+ - ")
_WORKER = re.compile(r"W-\d+-(?P<model>.+?)(?:-stdout|-stderr)?$")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}")
_KEY_FIELD = re.compile(r'(?i)("?(?:key|token|authorization)"?\s*[:=]\s*"?)[A-Za-z0-9._~+/=\-]{8,}')
_FRAME = re.compile(r'  File "(?P<path>[^"]*)", line \d+')
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


@dataclass(frozen=True)
class LogLine:
    """One line of a log file (keys masked); `time` is inherited by continuation lines."""

    file: Path
    number: int  # 1-based line number in `file`
    time: str
    thread: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Cause:
    """Why a worker failed: its exception line, and where to read the whole traceback."""

    line: str
    file: Path
    number: int

    def __str__(self) -> str:
        return f"{self.line} (see {self.file}, line {self.number})"


@dataclass
class _Position:
    """How far a file has been read: the byte offset, and the lines before it (None: not counted yet)."""

    offset: int
    lines: int | None = None


class ServerLogs:
    """The logs folder of a TorchServe this machine runs (`LocalServer.log_dir`)."""

    def __init__(self, log_dir: str | Path, *, key_file: str | Path | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.key_file = Path(key_file) if key_file else None

    def __repr__(self) -> str:
        return f"ServerLogs({str(self.log_dir)!r})"

    def exists(self) -> bool:
        """Whether the server has written logs here."""
        return any((self.log_dir / name).is_file() for name in LOG_FILES)

    # ------------------------------------------------------------------ positions

    def mark(self) -> dict[str, int]:
        """Where each file ends now: `lines(since=mark)` and `cause(since=mark)` read only what follows."""
        out = {}
        for name in LOG_FILES:
            try:
                out[name] = (self.log_dir / name).stat().st_size
            except OSError:
                out[name] = 0
        return out

    # ------------------------------------------------------------------ reading

    def lines(
        self,
        name: str | None = None,
        version: str | None = None,
        *,
        since: dict[str, int] | None = None,
        last: int | None = None,
        files: Iterable[str] = LOG_FILES,
        versions: Iterable[str] = (),
    ) -> list[LogLine]:
        """Lines of the server (all, or model `name`'s, or one version's), oldest first.

        A model's lines are its workers' (thread `W-<port>-NAME_VERSION`) and the frontend's lines
        that name it. `since`: only what was written after that mark; `last`: only the last N.
        `versions`: the versions `name` is known to have. A thread reads ambiguously when names
        hold '_' (`W-9000-a_b_1.0` is a_b 1.0, or a b_1.0): without `version`, a version with
        '_' in it counts only when it is one of these.
        """
        known = frozenset(versions)
        secrets = self._secrets()
        merged: list[LogLine] = []
        for file in files:
            keep: deque[LogLine] = deque(maxlen=last)
            for line in self._read(file, (since or {}).get(file, 0), secrets):
                if _belongs(line, name, version, known):
                    keep.append(line)
            merged += keep
        merged.sort(key=lambda line: line.time)  # stable: each file's order is kept
        return merged[-last:] if last else merged

    def follow(
        self,
        name: str | None = None,
        version: str | None = None,
        *,
        poll: float = 0.25,
        stop: float | None = None,
        versions: Iterable[str] = (),
    ) -> Iterator[LogLine]:
        """The lines written from now on, as they come, until interrupted (or for `stop` seconds)."""
        # per file: [byte offset read up to, lines before it] (now, not at the first next()); the line
        # count is kept, so each poll reads only what is new
        position = {file: _Position(size) for file, size in self.mark().items()}
        known = frozenset(versions)
        deadline = None if stop is None else time.monotonic() + stop

        def feed() -> Iterator[LogLine]:
            while deadline is None or time.monotonic() < deadline:
                secrets = self._secrets()
                sizes = self.mark()
                fresh: list[LogLine] = []
                for file in LOG_FILES:
                    at = position[file]
                    if sizes[file] < at.offset:  # rolled over: a new file begins
                        at.offset, at.lines = 0, 0
                    fresh += [line for line in self._read(file, at, secrets) if _belongs(line, name, version, known)]
                fresh.sort(key=lambda line: line.time)
                yield from fresh
                time.sleep(poll)

        return feed()

    def cause(
        self, name: str | None = None, version: str | None = None, *, since: dict[str, int] | None = None
    ) -> Cause | None:
        """Why the worker of `name` (`version`) failed since `since`, or None.

        That is the exception of its last traceback (the first of a chain), or else the last thing
        it wrote on stderr.
        """
        lines = [
            line
            for line in self.lines(name, version, since=since, files=("model_log.log",))
            if _WORKER.match(line.thread)
        ]
        found = _last_exception(lines)
        if found is None:
            errors = [line for line in lines if line.thread.endswith("-stderr") and _message(line).strip()]
            found = errors[-1] if errors else None
        if found is None:
            return None
        return Cause(_message(found).strip(), found.file, found.number)

    def wait_for_cause(
        self, name: str | None, version: str | None, *, since: dict[str, int], timeout: float = 2.0
    ) -> Cause | None:
        """`cause`, waiting up to `timeout` seconds for it to appear.

        A worker's last lines reach the file a moment after the frontend has answered that it died.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.cause(name, version, since=since)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    # ------------------------------------------------------------------ internals

    def _read(self, file: str, at: int | _Position, secrets: list[str]) -> Iterator[LogLine]:
        """The whole lines of `file` from a byte offset, or from a follower's position, which then
        follows the last line read."""
        position = at if isinstance(at, _Position) else _Position(at)
        start = position.offset
        path = self.log_dir / file
        try:
            handle = path.open("rb")
        except OSError:
            return
        with handle:
            number = position.lines
            if number is None:
                # line numbers count from the top: count what comes before `start`
                number, left = 0, start
                while left > 0:
                    block = handle.read(min(left, 1 << 20))
                    if not block:
                        break
                    number += block.count(b"\n")
                    left -= len(block)
            else:
                handle.seek(start)
            stamp, thread = "", ""
            offset = start
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a line still being written: it is read whole next time
                number += 1
                offset += len(raw)
                position.offset, position.lines = offset, number
                text = _mask(raw.decode("utf-8", errors="replace").rstrip("\r\n"), secrets)
                head = _LINE.match(text)
                if head:
                    stamp, thread = head["time"], head["thread"]
                yield LogLine(path, number, stamp, thread, text)

    def _secrets(self) -> list[str]:
        if self.key_file is None:
            return []
        try:
            keys = json.loads(self.key_file.read_text())
        except (OSError, ValueError):
            return []
        found = []
        for entry in keys.values() if isinstance(keys, dict) else ():
            key = entry.get("key") if isinstance(entry, dict) else None
            if isinstance(key, str) and len(key) >= 4:
                found.append(key)
        return found


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _KEY_FIELD.sub(lambda m: m.group(1) + MASK, text)


def _message(line: LogLine) -> str:
    head = _LINE.match(line.text)
    return line.text[head.end() :] if head else line.text


def _belongs(line: LogLine, name: str | None, version: str | None, known: frozenset[str] = frozenset()) -> bool:
    if name is None:
        return True
    worker = _WORKER.match(line.thread)
    if worker:
        model = worker["model"]
        if version is not None:
            return model == f"{name}_{version}"
        if not model.startswith(name + "_"):
            return False
        rest = model[len(name) + 1 :]
        return "_" not in rest or rest in known
    # the frontend's lines that name the model ("Model mlp loaded.", "Load model failed: mlp, ...")
    return re.search(rf"(?<![\w.\-]){re.escape(name)}(?![\w\-]|\.\w)", _message(line)) is not None


def _last_exception(lines: list[LogLine]) -> LogLine | None:
    """The exception line that caused the last traceback chain in `lines` (see the module docstring).

    Chains that run only through TorchServe's own code (the worker's "RuntimeError: 500 - Unknown
    exception" as it dies, after the handler's traceback) count only when no other chain is there.
    """
    chains: list[tuple[LogLine, bool]] = []  # (first exception, whether a frame is outside TorchServe)
    first: LogLine | None = None
    outside = False
    in_frames = False  # between "Traceback ..." and its exception line
    continues = False  # the next traceback continues the chain of the one before
    for line in lines:
        text = _message(line)
        if text.startswith("Traceback (most recent call last)"):
            in_frames = True
            if not continues:
                first, outside = None, False
        elif text.startswith(_CHAIN):
            continues = first is not None
        elif in_frames and text.startswith("  File "):
            frame = _FRAME.match(text)
            outside = outside or (frame is not None and not _is_torchserve(frame["path"]))
        elif in_frames and text.strip() and not text[0].isspace():
            if first is None:
                first = line  # a new chain: its first exception is the cause
            if continues and chains:
                chains.pop()  # the chain goes on: it replaces its shorter self
            chains.append((first, outside))
            in_frames = continues = False
    own = [line for line, outside in chains if outside]
    if own:
        return own[-1]
    return chains[-1][0] if chains else None


def _is_torchserve(path: str) -> bool:
    return path.startswith("<frozen") or "/ts/" in path.replace("\\", "/")
