"""A signed variant of a verified archive with another model-config (tune's trial copies).

Settings such as torch threads per worker live in the archive's model-config, so trying them means
serving another archive. That archive is built like any other: the members of the verified source
are unpacked, the model-config is changed, and the result is packaged and signed with the project's
key, so it passes the same verification as everything else TorchServe is given. A variant of an
archive with encrypted weights stays encrypted: the ciphertext and the keys member are copied as
they are, and the provenance keeps saying how they are encrypted.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from .build import MANIFEST_NAME, BuildResult
from .errors import ArchiveError
from .provenance import PROVENANCE_NAME
from .spec import ArchiveSpec
from .verify import ensure_verified

__all__ = ["derive"]


def derive(
    archive: Path,
    store: Path,
    key_dir: Path,
    *,
    name: str,
    version: str,
    config: dict[str, Any],
    public_key: Path | None = None,
) -> BuildResult:
    """Build and sign `store/<name>-<version>.mar`: `archive`'s members with its model-config updated
    by `config` (merged one level deep: {"handler": {"threads": 2}} keeps the handler's other keys).
    The source is verified first (against `public_key`, or the key pair in `key_dir`); an existing
    target is replaced (these are throw-away trial archives)."""
    from . import package, public_key_path

    archive = Path(archive)
    report = ensure_verified(archive, public_key=public_key or public_key_path(key_dir))
    prov = report.provenance or {}
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))["model"]
        config_member = manifest.get("configFile")
        if not config_member:
            raise ArchiveError(f"{archive.name} has no model-config: its handler cannot be given other settings")
        current = yaml.safe_load(zf.read(config_member)) or {}
        members = [n for n in zf.namelist() if n not in (MANIFEST_NAME, PROVENANCE_NAME, config_member)]
        nested = [n for n in members if "/" in n]
        if nested:
            raise ArchiveError(f"{archive.name} has members in folders ({nested[0]}): it cannot be rebuilt flat")
        with tempfile.TemporaryDirectory(prefix="torchship-derive-") as tmp:
            folder = Path(tmp)
            for member in members:  # names checked flat and safe by verification
                (folder / member).write_bytes(zf.read(member))
            merged = {**current}
            for key, value in config.items():
                merged[key] = {**(current.get(key) or {}), **value} if isinstance(value, dict) else value

            def path(key: str) -> Path | None:
                return folder / manifest[key] if manifest.get(key) else None

            roles = {manifest.get(k) for k in ("handler", "serializedFile", "modelFile", "requirementsFile")}
            spec = ArchiveSpec(
                name=name,
                version=version,
                handler=folder / manifest["handler"],
                weights=path("serializedFile"),
                model_file=path("modelFile"),
                requirements=path("requirementsFile"),
                model_config=merged,
                extra_files=tuple(folder / m for m in members if m not in roles),
            )
            # encrypted weights and their keys member are copied as they are: the variant opens with the same key
            return package(
                spec, store, key_dir, force=True, meta=prov.get("checkpoint"), encrypted=prov.get("encryption")
            )
