"""Signing archives with the OpenSSF model-signing library and local keys (offline, no sigstore).

Keys live in a key folder (the project's `.torchship/keys/`), made on first use: an EC P-256
private key `signing-key.pem` (mode 0600) and its public key `signing-key.pub.pem`, which is
what others need to verify.

What is signed is the archive's provenance member, `torchship-provenance.json`, which pins the
sha256 of every other member: signature -> provenance -> every byte of every member. Signing
costs the same for a 1 KB and a 10 GB model, and verification hashes the archive once, not twice.
The signature of `X.mar` is `X.mar.sig`, a sigstore bundle that the `model_signing` tool itself
checks against the extracted provenance; an archive copied elsewhere with its `.sig` still verifies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .errors import VerificationError

PRIVATE_NAME = "signing-key.pem"
PUBLIC_NAME = "signing-key.pub.pem"


def signature_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sig")


def ensure_keys(key_dir: Path) -> tuple[Path, Path]:
    """The key pair in `key_dir`, created (private key 0600) when missing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key_dir = Path(key_dir)
    private, public = key_dir / PRIVATE_NAME, key_dir / PUBLIC_NAME
    if private.exists():
        if not public.exists():
            key = serialization.load_pem_private_key(private.read_bytes(), password=None)
            _write_public(public, key)
        return private, public
    key_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(key_dir, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    _write_public(public, key)
    return private, public


def _write_public(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def sign(archive: Path, key_dir: Path) -> Path:
    """Sign `archive`'s provenance; the signature is written beside it (atomically) and returned."""
    import model_signing

    private, _ = ensure_keys(key_dir)
    sig = signature_path(archive)
    tmp = sig.with_name("." + sig.name + ".tmp")
    with _extracted_provenance(archive) as provenance, _quiet():
        model_signing.signing.Config().use_elliptic_key_signer(private_key=private).sign(provenance, tmp)
    os.replace(tmp, sig)
    return sig


def verify_signature(archive: Path, public_key: Path) -> None:
    """Raise VerificationError unless `archive.sig` is a valid signature, by `public_key`, of the
    provenance inside `archive` (whose member digests are checked separately)."""
    import model_signing

    sig = signature_path(archive)
    if not sig.is_file():
        raise VerificationError(f"no signature: {sig.name} is missing beside the archive")
    if not Path(public_key).is_file():
        raise VerificationError(f"public key not found: {public_key}")
    with _extracted_provenance(archive) as provenance:
        try:
            with _quiet():
                model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(
                    provenance, sig
                )
        except Exception as exc:  # the library raises ValueError and others
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise VerificationError(f"signature does not match the archive or the key: {first[:160]}") from None


@contextlib.contextmanager
def _extracted_provenance(archive: Path) -> Iterator[Path]:
    """The archive's provenance member as a file of the same name in a private temp folder."""
    from .provenance import PROVENANCE_NAME

    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(PROVENANCE_NAME)
    except KeyError:
        raise VerificationError(f"no {PROVENANCE_NAME} in {archive.name}: nothing to sign or verify") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise VerificationError(f"cannot read {archive.name}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="torchship-sign-") as folder:
        path = Path(folder) / PROVENANCE_NAME
        path.write_bytes(data)
        yield path


class _quiet:
    """model-signing logs at INFO; keep the CLI's output to what torchship says."""

    def __enter__(self):
        self.level = logging.root.manager.disable
        logging.disable(logging.INFO)

    def __exit__(self, *exc):
        logging.disable(self.level)
