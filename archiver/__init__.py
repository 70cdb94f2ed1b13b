"""The packaging layer: an ArchiveSpec goes in; a signed TorchServe .mar with provenance comes out.

result = archiver.package(spec, store, key_dir)     # build + sign
archiver.ensure_verified(result.path, public_key=key_dir / "signing-key.pub.pem")

result = archiver.package(spec, store, key_dir, model_key=archiver.load_keyring(path))   # weights encrypted
"""

from __future__ import annotations

import json
from pathlib import Path

from .build import BuildResult, archive_path, build
from .examples import EXAMPLES, checkpoint_files, example_spec
from .handler_base import with_handler_base
from .model_config import validate_model_config
from .model_keys import Keyring, ensure_keyring, keyring_path, load_keyring
from .preflight import PreflightReport, check_imports
from .requirements import ensure_requirements_met
from .signing import ensure_keys, sign, signature_path
from .spec import ArchiveSpec
from .verify import VerifyReport, ensure_verified, verify_archive

__all__ = [
    "ArchiveSpec",
    "BuildResult",
    "build",
    "package",
    "archive_path",
    "example_spec",
    "checkpoint_files",
    "EXAMPLES",
    "validate_model_config",
    "sign",
    "signature_path",
    "ensure_keys",
    "verify_archive",
    "ensure_verified",
    "VerifyReport",
    "public_key_path",
    "check_imports",
    "PreflightReport",
    "ensure_requirements_met",
    "with_handler_base",
    "Keyring",
    "ensure_keyring",
    "keyring_path",
    "load_keyring",
]


def public_key_path(key_dir: Path) -> Path:
    from .signing import PUBLIC_NAME

    return Path(key_dir) / PUBLIC_NAME


def package(
    spec: ArchiveSpec,
    store: Path,
    key_dir: Path,
    *,
    force: bool = False,
    meta: dict | None = None,
    progress=None,
    check_imports: bool = False,
    model_key: Keyring | None = None,
    encrypted: dict | None = None,
) -> BuildResult:
    """Build and sign. The checkpoint's meta.json is read from the spec's extra files when not given.

    `check_imports`: first make sure the handler and model file import in the server's Python
    (`preflight.check_imports`), as `torchship package --handler` does. `model_key`: encrypt the
    weights under the keyring's current key (`load_keyring`); `encrypted`: members already
    encrypted, copied as they are (see `build`)."""
    if meta is None:
        meta_file = next((p for p in spec.extra_files if Path(p).name == "meta.json"), None)
        meta = json.loads(Path(meta_file).read_text(encoding="utf-8")) if meta_file else None
    result = build(
        spec,
        store,
        force=force,
        meta=meta,
        progress=progress,
        check_imports=check_imports,
        model_key=model_key,
        encrypted=encrypted,
    )
    try:
        sign(result.path, key_dir)
    except Exception:
        # an unsigned archive would only be refused later: leave nothing half-done
        result.path.unlink(missing_ok=True)
        raise
    return result
