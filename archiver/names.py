"""The one rule for model names and versions, everywhere: CLI, client, deploy.yaml, packaging, export.

A name and a version become a file name (`<name>-<version>.mar`), a URL path segment and a
registry key, so they are checked before any file is read or any request is sent. TorchServe's
own rule for names is `^[A-Za-z0-9][A-Za-z0-9_\\-.]*$`; torchship adds a length bound and refuses
`..` anywhere (TorchServe's allowed_urls check refuses any URL containing it, and it reads as a
path step to people and tools).
"""

from __future__ import annotations

import re

from .errors import BadInput

__all__ = ["InvalidName", "check_name", "check_version", "check_name_version", "MAX_NAME_LENGTH", "MAX_VERSION_LENGTH"]

# <name>-<version>.mar.sig stays well under the 255 bytes a file name may have
MAX_NAME_LENGTH = 128
MAX_VERSION_LENGTH = 64
RESERVED_VERSIONS = ("all",)  # TorchServe's word for every version of a model
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.\-]*")


class InvalidName(BadInput):
    """A model name or version that torchship refuses (bad input: CLI exit 7)."""


def check_name(name: object) -> str:
    """`name` unchanged when it is a valid model name; InvalidName otherwise."""
    if not isinstance(name, str) or not _valid(_NAME, name, MAX_NAME_LENGTH):
        raise InvalidName(
            f"invalid model name {_show(name)}: letters, digits, '_', '-' and '.', starting with a "
            f"letter or digit, no '..', at most {MAX_NAME_LENGTH} characters"
        )
    return name


def check_version(version: object) -> str:
    """`version` unchanged when it is a valid model version (e.g. 1.0, 2.1-rc1); InvalidName otherwise."""
    if not isinstance(version, str) or not _valid(_VERSION, version, MAX_VERSION_LENGTH):
        raise InvalidName(
            f"invalid version {_show(version)}: e.g. 1.0 or 2.1-rc1 (letters, digits, '_', '-' "
            f"and '.', starting with a letter or digit, no '..', at most {MAX_VERSION_LENGTH} "
            "characters)"
        )
    if version.lower() in RESERVED_VERSIONS:
        raise InvalidName(f"invalid version {version!r}: TorchServe reads it as 'every version' (use e.g. 1.0)")
    return version


def check_name_version(name: object, version: object | None) -> tuple[str, str | None]:
    """Both checked; a version of None (meaning "the default" or "the latest") is allowed."""
    return check_name(name), (None if version is None else check_version(version))


def _valid(pattern: re.Pattern[str], value: str, limit: int) -> bool:
    return len(value) <= limit and pattern.fullmatch(value) is not None and ".." not in value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
