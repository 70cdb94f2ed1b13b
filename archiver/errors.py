"""The packaging layer's errors, and the root of every torchship error.

The root lives here, in the lowest layer that raises one, so that archiver (and train above it)
never import torchship; `torchship.sdk.errors` re-exports all three and draws the whole tree.
"""

from __future__ import annotations

__all__ = ["TorchServeError", "BadInput", "ArchiveError", "VerificationError"]


class TorchServeError(Exception):
    """Root of every torchship error: catch this to catch them all."""


class BadInput(TorchServeError, ValueError):
    """The caller's input is invalid (a name, an option, a file): nothing was done. A ValueError
    too, so code that catches ValueError for bad arguments keeps working."""


class ArchiveError(TorchServeError):
    """An archive could not be built, or building it would overwrite one."""


class VerificationError(TorchServeError):
    """An archive failed verification."""
