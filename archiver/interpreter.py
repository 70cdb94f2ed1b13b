"""The server's Python: which interpreter TorchServe's workers run, and asking it questions in a child process.

A worker is started with the interpreter that runs the `torchserve` launcher: the launcher passes its own
`sys.executable` to the Java frontend as `--python`, and in TorchServe 0.12.0 that argument overrides a
`python=` line of the config file (ConfigManager sets the property from the argument after loading the
file). torchship's local server runs the `torchserve` beside its own interpreter, so the server's Python is
the one running torchship. What is asked of it runs in a child process: in a throw-away folder (its working
folder, TMPDIR), without writing bytecode, with a time limit, and its process group killed when the limit
passes, so a probe can neither hang the caller nor write into the user's tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import ArchiveError

__all__ = ["server_python", "run_probe"]

# never handed to a worker either (torchship.ops.server drops it from the server's environment)
_DROPPED_ENV = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)
_OUTPUT_TAIL = 4000  # characters of the probe's own output kept for an error message


def server_python() -> str:
    """The interpreter the local TorchServe's workers run (see the module docstring)."""
    return sys.executable


def run_probe(
    python: str | os.PathLike[str],
    script: str,
    request: dict[str, Any],
    *,
    folder: Path | None = None,
    timeout: float,
    what: str,
) -> dict[str, Any]:
    """Run `script` in `python` with `folder` (default: an empty throw-away one) as its working folder;
    return the JSON it writes.

    The script reads the request from the file named by sys.argv[1] and writes its answer to sys.argv[2]
    (not to stdout, which the code it imports may print to). `what` names the probe in error messages.
    Raises ArchiveError when the interpreter cannot be run, the time limit passes, or no answer comes.
    """
    with tempfile.TemporaryDirectory(prefix="torchship-probe-") as tmp:
        scratch = Path(tmp)
        request_file, answer_file = scratch / "request.json", scratch / "answer.json"
        (scratch / "tmp").mkdir()
        (scratch / "cwd").mkdir()
        request_file.write_text(json.dumps(request), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(PYTHONDONTWRITEBYTECODE="1", TMPDIR=str(scratch / "tmp"), TEMP=str(scratch / "tmp"))
        env.update(TMP=str(scratch / "tmp"))
        try:
            proc = subprocess.Popen(
                [str(python), "-c", script, str(request_file), str(answer_file)],
                cwd=folder or scratch / "cwd",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole on timeout
            )
        except OSError as exc:
            raise ArchiveError(f"cannot run the server's Python {python} to {what}: {exc.strerror or exc}") from None
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ArchiveError(
                f"{what} in the server's Python did not finish within {timeout:.0f} s "
                "(does the code do slow work or wait for something when it is imported?)"
            ) from None
        finally:
            _kill_group(proc)  # whatever it started and left behind
        text = output.decode("utf-8", "replace")[-_OUTPUT_TAIL:]
        try:
            answer = json.loads(answer_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            last = text.strip().splitlines()[-1] if text.strip() else f"exit status {proc.returncode}"
            raise ArchiveError(f"{what} in the server's Python {python} failed: {last}") from None
        if not isinstance(answer, dict):
            raise ArchiveError(f"{what} in the server's Python {python} gave no answer")
        answer["_output"], answer["_returncode"] = text, proc.returncode
        return answer


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
