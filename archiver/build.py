"""Build a .mar with torch-model-archiver's Python API, atomically, never overwriting by accident."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import yaml

from torchship.errors import ArchiveError

from .model_config import validate_model_config
from .spec import ArchiveSpec

__all__ = ["build", "archive_path"]

# torch-model-archiver stages files in <tempdir>/<model name> and deletes that folder first, so
# two builds of one name would collide: each build gets its own temp folder, one at a time per
# process (tempfile.tempdir is process-wide).
_TEMPDIR_LOCK = threading.Lock()


def archive_path(store: Path, name: str, version: str) -> Path:
    return Path(store) / f"{name}-{version}.mar"


def build(spec: ArchiveSpec, store: str | os.PathLike, *, force: bool = False) -> Path:
    """Build `store/<name>-<version>.mar` from `spec` and return its path.

    An existing archive is replaced only with `force`. The archive appears whole or not at all:
    it is built in a staging folder inside the store and renamed into place.
    """
    validate_model_config(spec.model_config)
    for _, path in spec.files():
        if "," in str(path):
            raise ArchiveError(f"file paths may not contain ',' (torch-model-archiver splits on it): {path}")
    store = Path(store)
    target = store / spec.file_name
    if target.exists() and not force:
        raise ArchiveError(f"{target} exists: package another --version, or pass --force to replace it")
    try:
        store.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{spec.name}-", dir=store))
    except OSError as exc:
        raise ArchiveError(f"cannot write to the model store {store}: {exc.strerror}") from None
    try:
        built = _run_model_archiver(spec, staging)
        os.replace(built, target)
    except OSError as exc:
        raise ArchiveError(f"packaging {spec.file_name} failed: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _run_model_archiver(spec: ArchiveSpec, staging: Path) -> Path:
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    config_file = None
    if spec.model_config:
        config_file = staging / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(spec.model_config, sort_keys=True), encoding="utf-8")
    out = staging / "out"
    out.mkdir()
    config = ModelArchiverConfig(
        model_name=spec.name,
        handler=str(spec.handler),
        version=spec.version,
        serialized_file=str(spec.weights) if spec.weights else None,
        model_file=str(spec.model_file) if spec.model_file else None,
        extra_files=",".join(str(p) for p in spec.extra_files) or None,
        requirements_file=str(spec.requirements) if spec.requirements else None,
        config_file=str(config_file) if config_file else None,
        export_path=str(out),
        archive_format="zip-store",  # uncompressed: weights barely compress, and deflate is slow
        force=True,
    )
    with _private_tempdir(staging / "work"):
        try:
            generate_model_archive(config)
        except Exception as exc:  # the archiver raises plain exceptions of many kinds
            raise ArchiveError(f"torch-model-archiver failed for {spec.file_name}: {exc}") from None
    built = out / f"{spec.name}.mar"
    if not built.is_file():
        raise ArchiveError(f"torch-model-archiver wrote no archive for {spec.file_name}")
    return built


@contextlib.contextmanager
def _private_tempdir(path: Path) -> Iterator[None]:
    path.mkdir()
    with _TEMPDIR_LOCK:
        saved = tempfile.tempdir
        tempfile.tempdir = str(path)
        level = logging.getLogger().level
        try:
            yield
        finally:
            tempfile.tempdir = saved
            logging.getLogger().setLevel(level)
