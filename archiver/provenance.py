"""The provenance document packed in every archive: what it holds, and what it was built from.

`torchship-provenance.json` lists the sha256 and size of every other member (the MANIFEST
included), the checkpoint's meta.json (training run, data fingerprint, hyper-parameters, metrics,
git commit), the tool versions and, for an archive with encrypted weights, which members are
encrypted and how (cipher, chunks, key id, and the plaintext's name, size and sha256). TorchServe
and the handlers ignore it; `torchship verify` reads it. Its own sha256 identifies the build, since
it pins every other byte of the archive.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from .spec import ArchiveSpec

PROVENANCE_NAME = "torchship-provenance.json"
FORMAT = "torchship-provenance/1"
_EPOCH_1980 = 315532800


def build_time(meta: dict | None) -> int:
    """The build time recorded in the archive, reproducibly: SOURCE_DATE_EPOCH when set, else
    the checkpoint's creation time, else 1980-01-01 (the reproducible-builds convention)."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env and env.isdigit():
        return max(int(env), _EPOCH_1980)
    created = (meta or {}).get("created")
    if created:
        try:
            return max(int(datetime.fromisoformat(str(created)).timestamp()), _EPOCH_1980)
        except ValueError:
            pass
    return _EPOCH_1980


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def provenance_document(
    spec: ArchiveSpec,
    members: dict[str, dict],
    meta: dict | None,
    *,
    requirements: list[str] | None = None,
    encryption: dict[str, Any] | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """The document; `requirements` (the parsed requirements file) is recorded only when the archive has one,
    and `encryption` (which members are encrypted, and how: see `encryption`) only when it has encrypted
    members, so other archives stay byte-identical to those built before the fields existed. `weights`
    names the weights member when it is not the weights file's own name (the encrypted member)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "model": {"name": spec.name, "version": spec.version},
        "handler": spec.handler.name,
        "weights": weights or (spec.weights.name if spec.weights else None),
        "members": dict(sorted(members.items())),
        "checkpoint": meta,
        "built": datetime.fromtimestamp(build_time(meta), timezone.utc).isoformat(timespec="seconds"),
        "tools": {
            "torchship": _version("torchship"),
            "torch": _version("torch"),
            "torch-model-archiver": _version("torch-model-archiver"),
            "python": platform.python_version(),
        },
    }
    if requirements is not None:
        doc["requirements"] = list(requirements)
    if encryption is not None:
        doc["encryption"] = encryption
    return doc
