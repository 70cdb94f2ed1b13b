"""An archive's requirements file: a plain list of requirements, checked against the server's Python at deploy.

`torchship package --requirements FILE` packs FILE as the MANIFEST's requirementsFile and records its
parsed lines in the provenance. Only requirements are accepted (`numpy`, `torch>=2.0`, `pillow; sys_platform
== "linux"`): pip options (`-r other.txt`, `-e .`, `--index-url`), URLs and paths are refused, since a file
that points elsewhere is not a list of what the model needs. torchship never installs them (the server runs
with install_py_dep_per_model=false): deploy reads them from the verified archive and refuses, with the
list of what is missing or at the wrong version, when the server's Python does not meet them.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import ArchiveError
from .interpreter import run_probe, server_python

__all__ = [
    "parse_requirements",
    "read_requirements_file",
    "archive_requirements",
    "Environment",
    "installed",
    "unmet",
    "ensure_requirements_met",
]

MAX_BYTES = 1 << 20  # a requirements file is a short list; bound what is read from an archive
MANIFEST_NAME = "MAR-INF/MANIFEST.json"


def parse_requirements(text: str, *, source: str = "requirements file") -> list[str]:
    """The requirements of a requirements file, normalised (`numpy >= 1.26` -> `numpy>=1.26`), in order.

    Blank lines and comments are skipped and a trailing backslash continues a line, as pip reads them.
    Raises ArchiveError naming the first line that is not a requirement.
    """
    out: list[str] = []
    for number, line in _logical_lines(text):
        where = f"{source} line {number}"
        if line.startswith("-"):
            raise ArchiveError(
                f"{where}: {line!r} is a pip option: list the requirements themselves, one per line "
                "(a name and a version specifier, e.g. torch>=2.0)"
            )
        if "://" in line or line.startswith((".", "/", "~")):
            raise ArchiveError(f"{where}: {line!r} is a URL or a path: only named requirements are accepted")
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            hint = " (pip options such as --hash are not accepted)" if " --" in line or line.endswith("--") else ""
            raise ArchiveError(f"{where}: {line!r} is not a valid requirement{hint}: {exc}") from None
        if req.url:
            raise ArchiveError(f"{where}: {line!r} names a URL: only named requirements are accepted")
        out.append(str(req))
    return out


def read_requirements_file(path: str | os.PathLike[str]) -> list[str]:
    """Parse the requirements file at `path` (see `parse_requirements`)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ArchiveError(f"{path} is over {MAX_BYTES >> 20} MiB: not a requirements file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ArchiveError(f"{path} is not UTF-8 text: not a requirements file") from None
    except OSError as exc:
        raise ArchiveError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_requirements(text, source=path.name)


def archive_requirements(archive: str | os.PathLike[str]) -> tuple[str, list[str]] | None:
    """(member name, requirements) of the archive's requirementsFile, or None when it has none.

    Read from the archive itself (run it after verification, so these are the verified bytes).
    """
    with zipfile.ZipFile(archive) as zf:
        try:
            manifest = json.loads(zf.read(MANIFEST_NAME))["model"]
        except (KeyError, ValueError, TypeError):
            raise ArchiveError(f"{Path(archive).name}: {MANIFEST_NAME} is missing or unreadable") from None
        member = manifest.get("requirementsFile") if isinstance(manifest, dict) else None
        if not member:
            return None
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise ArchiveError(f"{Path(archive).name}: its requirements file {member} is not in the archive") from None
        if info.file_size > MAX_BYTES:
            raise ArchiveError(f"{Path(archive).name}: its requirements file {member} is over {MAX_BYTES >> 20} MiB")
        try:
            text = zf.read(info).decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"{Path(archive).name}: its requirements file {member} is not UTF-8 text") from None
    return member, parse_requirements(text, source=f"{Path(archive).name}:{member}")


@dataclass(frozen=True)
class Environment:
    """What an interpreter has installed: {canonical distribution name: version}, and its marker values."""

    python: str
    distributions: dict[str, str]
    markers: dict[str, str]


# Runs in the server's Python, which may lack `packaging`: the standard library only.
_PROBE = r"""
import json, os, platform, re, sys
from importlib import metadata

def fmt(info):
    v = "%d.%d.%d" % (info.major, info.minor, info.micro)
    if info.releaselevel != "final":
        v += info.releaselevel[0] + str(info.serial)
    return v

dists = {}
for d in metadata.distributions():
    name = d.metadata["Name"]
    if name:
        dists.setdefault(re.sub(r"[-_.]+", "-", name).lower(), d.version)
markers = {
    "implementation_name": sys.implementation.name,
    "implementation_version": fmt(sys.implementation.version),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}
with open(sys.argv[2], "w") as f:
    json.dump({"distributions": dists, "markers": markers}, f)
"""


def installed(python: str | os.PathLike[str] | None = None, *, timeout: float = 60.0) -> Environment:
    """The distributions installed in `python` (default: the server's Python), asked in a child process."""
    python = str(python or server_python())
    answer = run_probe(python, _PROBE, {}, timeout=timeout, what="listing the installed distributions")
    return Environment(python, dict(answer.get("distributions") or {}), dict(answer.get("markers") or {}))


def unmet(requirements: list[str], env: Environment) -> list[str]:
    """Each requirement `env` does not meet, said plainly: `torchvision (not installed)`,
    `numpy<1.0 (2.2.1 installed)`. Requirements whose marker does not apply there are skipped."""
    markers = {**default_environment(), **env.markers}
    problems = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({**markers, "extra": ""}):  # type: ignore[dict-item]
            continue
        shown = f"{req.name}{req.specifier}" if req.specifier else req.name
        version = env.distributions.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{shown} (not installed)")
            continue
        try:
            ok = req.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            ok = not req.specifier
        if not ok:
            problems.append(f"{shown} ({version} installed)")
    return problems


def ensure_requirements_met(
    archive: str | os.PathLike[str], *, python: str | os.PathLike[str] | None = None, timeout: float = 60.0
) -> list[str]:
    """Refuse (ArchiveError) an archive whose requirements file the server's Python does not meet.

    Returns the archive's requirements ([] when it has none; then nothing is run). Read from the archive:
    call it after verification.
    """
    archive = Path(archive)
    found = archive_requirements(archive)
    if found is None:
        return []
    member, requirements = found
    if not requirements:
        return []
    env = installed(python, timeout=timeout)
    problems = unmet(requirements, env)
    if problems:
        install = " ".join(_shell_quote(p.split(" (")[0]) for p in problems)
        raise ArchiveError(
            f"refusing {archive.name}: the server's Python ({env.python}) does not meet its requirements "
            f"({member}): {', '.join(problems)}. Install {'them' if len(problems) > 1 else 'it'} into the server's "
            f"environment ({env.python} -m "
            f"pip install {install}), or package the model with requirements this server meets (torchship never "
            "installs an archive's requirements). Nothing was registered"
        )
    return requirements


def _shell_quote(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+", text) else "'" + text.replace("'", "'\\''") + "'"


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each requirement line: comments stripped, continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            out.append((start, line))
    if pending.strip():
        out.append((start, pending.strip()))
    return out
