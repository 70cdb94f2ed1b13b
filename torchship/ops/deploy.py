"""Deploy one archive of the local model store: register it, wait until it serves, optionally make it default.

Idempotent: deploying a version that is already registered only makes sure it has its workers.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from torchship.ops.takedown import take_down
from torchship.ops.versions import latest_version
from torchship.sdk.client import TorchServe
from torchship.sdk.errors import (
    ArchiveError,
    BadInput,
    ModelAlreadyExists,
    ServerError,
    TorchServeError,
    VerificationError,
)
from torchship.sdk.types import ModelDescription

__all__ = ["DeployResult", "deploy", "shared_writable"]


@dataclass(frozen=True)
class DeployResult:
    """What `deploy` did (registered, or already registered), the version as it now serves, and how long it took."""

    action: str  # "registered" or "already registered"
    description: ModelDescription
    seconds_to_ready: float


def deploy(
    client: TorchServe,
    store: Path,
    name: str,
    version: str | None = None,
    *,
    workers: int = 1,
    batch_size: int | None = None,
    max_batch_delay: int | None = None,
    make_default: bool = False,
    timeout: float = 120.0,
    public_key: Path | None = None,
    allow_unsigned: bool = False,
    model_keys: Path | None = None,
) -> DeployResult:
    """Verify an archive of the store, register it, wait until it serves, and make it the default if asked.

    It is registered by file name. Nothing reaches TorchServe unless verification passes; `allow_unsigned`
    skips only the signature and provenance checks (third-party archives), never the safety ones.
    `model_keys`: the keyring (the project's, when it has one) that opens encrypted weights, so they are
    decrypted and checked against the provenance's plaintext digest before TorchServe loads them (other
    weights' ciphertext swapped in is refused here); without it encrypted weights are checked as ciphertext.
    """
    from torchship.archiver import archive_path, ensure_requirements_met, ensure_verified
    from torchship.archiver.names import check_name_version

    check_name_version(name, version)  # before any file is read or any request is sent
    started = time.monotonic()
    version = version or latest_version(store, name)
    if version is None:
        raise ArchiveError(f"no archive of {name} in {store}: run `torchship package {name}` first")
    archive = archive_path(store, name, version)
    if not archive.is_file():
        raise ArchiveError(f"archive not found: {archive}: run `torchship package {name} --version {version}`")
    if workers < 1:
        raise BadInput("deploy needs at least one worker")
    _refuse_shared_writes(archive)
    before = _identity(archive)
    ensure_verified(archive, public_key=public_key, allow_unsigned=allow_unsigned, model_keys=model_keys)
    # its requirements file (read from the verified archive) against the server's Python; never installed
    ensure_requirements_met(archive)

    action = "registered"
    try:
        client.register(
            archive.name,
            model_name=name,
            initial_workers=workers,
            batch_size=batch_size,
            max_batch_delay=max_batch_delay,
            synchronous=True,
            timeout=timeout,
        )
        if _identity(archive) != before:
            # TorchServe has unpacked what it read by now: if the file changed since verification
            # began, what it read may not be what was verified
            _remove(client, name, version)
            raise VerificationError(
                f"{archive.name} changed while it was being verified and registered; it was "
                "removed again: is something else writing to the model store?"
            )
    except ModelAlreadyExists:
        action = "already registered"
        current = client.describe(name, version)[0]
        if current.min_workers < workers or current.ready_workers < workers:
            client.scale(name, version=version, min_workers=workers, max_workers=max(workers, current.max_workers))
    except ServerError as exc:
        # A failed synchronous register leaves the version registered with no worker: remove it.
        _remove(client, name, version)
        why = "" if exc.cause else f": {exc.message}; see model_log.log in the server's logs folder"
        failed = ServerError(exc.status, exc.type, f"{name} {version} failed to load and was removed again{why}")
        raise failed.with_cause(exc.cause) from None
    desc = client.wait_until_ready(name, version, timeout=timeout)
    if make_default and not desc.is_default:
        client.set_default(name, version)
    desc = client.describe(name, version)[0]
    return DeployResult(action, desc, time.monotonic() - started)


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when a file is replaced or written (ctime cannot be set back by a writer)."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def shared_writable(st: os.stat_result) -> bool:
    """Whether every account on the machine may write it (a sticky folder of one's own, as /tmp, does not count)."""
    sticky_own_folder = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == os.getuid()
    return bool(st.st_mode & stat.S_IWOTH) and not sticky_own_folder


def _refuse_shared_writes(archive: Path) -> None:
    """Verification speaks for the bytes TorchServe reads only while no one else can change them:
    refuse an archive, or a model store, that every account on the machine may write."""
    for path in (archive, archive.parent):
        if shared_writable(path.stat()):
            raise ArchiveError(
                f"{path} is writable by every account on this machine: anyone could swap the archive "
                f"between verification and loading (chmod o-w {path})"
            )


def _remove(client: TorchServe, name: str, version: str) -> None:
    try:
        take_down(client, name, version)
    except TorchServeError:
        pass
