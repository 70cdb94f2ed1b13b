"""TorchServe's token auth: the key file a server writes at start, and its three keys.

TorchServe writes ``key_file.json`` (mode 0600) into its working folder at every start, with a
management key, an inference key (both expire after ``token_expiration_min``) and an API key
that never expires and can rotate the other two. Keys never appear in repr, logs or errors.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from torchship.sdk.errors import ConfigError

__all__ = ["KeyFile", "StaticKeys"]


class KeyFile:
    """The keys of a running server, read from its key file and re-read on demand."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._keys: dict[str, str] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyFile({str(self.path)!r})"

    def key(self, kind: str) -> str:
        """The current key for 'management', 'inference' or 'api'."""
        with self._lock:
            if self._keys is None:
                self._keys = self._read()
            return self._keys[kind]

    def reload(self) -> bool:
        """Read the file again; True when any key changed."""
        with self._lock:
            old = self._keys
            self._keys = self._read()
            return old != self._keys

    def _read(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"key file not found: {self.path}. Is the server running? "
                "(`torchship serve start` writes it; a server started with "
                "disable_token_authorization=true needs no key file)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read key file {self.path}: {exc}") from None
        try:
            return {
                "management": raw["management"]["key"],
                "inference": raw["inference"]["key"],
                "api": raw["API"]["key"],
            }
        except (KeyError, TypeError):
            raise ConfigError(f"key file {self.path} lacks the management/inference/API keys") from None


class StaticKeys:
    """Keys given directly (e.g. from environment variables), or none for a server without auth."""

    def __init__(self, management: str | None = None, inference: str | None = None, api: str | None = None):
        self._keys = {"management": management, "inference": inference, "api": api}

    def __repr__(self) -> str:
        return "StaticKeys(<hidden>)"

    def key(self, kind: str) -> str | None:
        """Return the key given for 'management', 'inference' or 'api' (None when not given)."""
        return self._keys[kind]

    def reload(self) -> bool:
        """Return False: given keys never change."""
        return False
