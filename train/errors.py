"""The training layer's error (re-exported by `torchship.sdk.errors`)."""

from __future__ import annotations

from torchship.archiver.errors import TorchServeError

__all__ = ["TrainingError"]


class TrainingError(TorchServeError):
    """A training run could not start or failed."""
