"""Taking a model version off the server without TorchServe 0.12's DELETE race.

TorchServe 0.12's `ModelManager.unregisterModel` removes the version from its map first and then
stops its workers; stopping a worker walks the batch aggregator's jobs while the interrupted worker
thread removes entries from them, so a DELETE that meets a worker still finishing its last batch can
fail with a 500 (ConcurrentModificationException) after the version is gone but before the name is:
the name stays, with no version and a default that no longer exists, and refuses every later
registration under it. Scaling the version's workers to zero first meets the same race harmlessly
(the version stays registered: wait and try again), and the DELETE then has no worker left to stop.

Every path that unregisters goes through `take_down`: `torchship unregister`, `apply` (a version
dropped from deploy.yaml, or registered again with other batching), a rollout's failed candidate,
`deploy`'s clean-up, `tune`'s trials, and a live rollout's end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from torchship.sdk.errors import ModelNotFound, ServerError

if TYPE_CHECKING:
    from torchship.sdk.client import TorchServe

__all__ = ["take_down", "unregister_after_load"]


def take_down(client: TorchServe, name: str, version: str | None = None, *, tries: int = 10) -> str:
    """Unregister `version` of `name` (default: the default version), its workers first; returns the DELETE's status.

    The default version of a model that has others is left to TorchServe to refuse (403: it serves
    /predictions/NAME): its workers are never stopped for a DELETE that cannot succeed. A version or
    name that does not exist gets TorchServe's own 404."""
    try:
        versions = client.versions(name)
    except ModelNotFound:
        return client.unregister(name, version)  # TorchServe's own "not found"
    default = next((d.version for d in versions if d.is_default), None)
    target = version if version is not None else default
    if target not in {d.version for d in versions} or (target == default and len(versions) > 1):
        return client.unregister(name, version)  # TorchServe's own 404 or 403
    return _workers_then_version(client, name, target, tries) or ""


def unregister_after_load(client: TorchServe, name: str, tries: int = 10, *, version: str | None = None) -> None:
    """Take a model that was just under heavy load off the server, workers first; gone already is fine.

    `version`: that version only (the name's default must be another one). Unlike `take_down`, nothing
    is looked up first."""
    _workers_then_version(client, name, version, tries)


def _workers_then_version(client: TorchServe, name: str, version: str | None, tries: int) -> str | None:
    """Scale to zero workers, then DELETE, each tried again while the server is busy; the DELETE's status."""
    _until_done(lambda: client.scale(name, version=version, min_workers=0, max_workers=0, synchronous=True), tries)
    return _until_done(lambda: client.unregister(name, version), tries)


def _until_done(call: Callable[[], str], tries: int) -> str | None:
    """Run a management call, trying again a second later while the server fails; not found is done (None)."""
    for attempt in range(tries):
        try:
            return call()
        except ModelNotFound:
            return None
        except ServerError:
            if attempt == tries - 1:
                raise
            time.sleep(1)
    return None
