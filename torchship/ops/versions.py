"""Archive versions in a model store: which exist, which is newest, which comes next."""

from __future__ import annotations

from pathlib import Path

from packaging.version import InvalidVersion, Version

from torchship.archiver.names import InvalidName, check_name, check_version


def _key(version: str) -> tuple:
    try:
        return (1, Version(version), version)
    except InvalidVersion:
        return (0, Version("0"), version)


def store_versions(store: Path, name: str) -> list[str]:
    """Return the versions of `name` with an archive in `store`, oldest first.

    The name is checked by the one rule (archiver.names) first: it becomes a glob pattern, and must never be a
    path or a wildcard.
    """
    check_name(name)
    prefix = f"{name}-"
    found = [p.name[len(prefix) : -len(".mar")] for p in Path(store).glob(f"{name}-*.mar") if p.is_file()]
    # `name-x.mar` also matches a model called e.g. `name-x`: keep valid versions that start with a digit
    return sorted((v for v in found if v[:1].isascii() and v[:1].isdigit() and _is_version(v)), key=_key)


def _is_version(text: str) -> bool:
    try:
        check_version(text)
    except InvalidName:
        return False
    return True


def latest_version(store: Path, name: str) -> str | None:
    """Return the newest version of `name` with an archive in `store`, or None."""
    versions = store_versions(store, name)
    return versions[-1] if versions else None


def next_version(store: Path, name: str) -> str:
    """The next free major version: 1.0 for a new model, else the newest major + 1."""
    latest = latest_version(store, name)
    if latest is None:
        return "1.0"
    try:
        return f"{Version(latest).major + 1}.0"
    except InvalidVersion:
        return f"{latest}.1"
