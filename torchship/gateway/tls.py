"""The gateway's certificates: a local CA made on first use, and a server certificate it signs.

`.torchship/tls/` holds `ca.pem` (what clients pin: `TorchServe(..., ca_file=...)`), `ca-key.pem`,
`server.pem` and `server-key.pem`; the private keys are 0600 from their first byte. Keys are ECDSA
P-256: the cheapest handshake that every TLS 1.2+ client speaks. The server certificate names
localhost, 127.0.0.1, ::1, this host's name and the `--listen` address; it is issued again when a
name it lacks is asked for, when it expires within 30 days, or when the CA changed. A user's own
certificate (`--cert`/`--key`) is checked (it loads, the key matches, the key is private) and used as
it is: torchship never copies or rewrites it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from torchship.sdk.errors import ConfigError

from .files import private_mode_problem, write_file

__all__ = ["Certificates", "local_certificates", "own_certificates", "server_names"]

CA_DAYS = 3650
SERVER_DAYS = 397  # what public CAs may issue at most; reissued 30 days before it ends
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class Certificates:
    """What nginx serves (`cert`, `key`) and what a client pins (`ca`: None for a user's own certificate)."""

    cert: Path
    key: Path
    ca: Path | None


def server_names(listen_host: str | None = None) -> list[str]:
    """The names a local server certificate covers: localhost, loopback, this host, and the listen address."""
    names = ["localhost", "127.0.0.1", "::1"]
    host = socket.gethostname()
    names += [host, socket.getfqdn(host)]
    if listen_host and not _unspecified(listen_host):
        names.append(listen_host)
    elif listen_host:  # 0.0.0.0 or ::, every address of this host: its names, and what they resolve to
        try:
            names += [str(info[4][0]) for info in socket.getaddrinfo(host, None)]
        except OSError:
            pass
    out: list[str] = []
    for name in names:
        name = name.strip("[]").lower()
        if name and name not in out:
            out.append(name)
    return out


def local_certificates(tls_dir: Path, names: list[str], *, now: dt.datetime | None = None) -> Certificates:
    """The project CA (made on first use) and a server certificate for `names`, issued when needed."""
    now = now or dt.datetime.now(dt.timezone.utc)
    ca_pem, ca_key_pem = tls_dir / "ca.pem", tls_dir / "ca-key.pem"
    if not (ca_pem.is_file() and ca_key_pem.is_file()):
        _make_ca(ca_pem, ca_key_pem, now)
    problem = private_mode_problem(ca_key_pem)
    if problem:
        raise ConfigError(f"the gateway's CA key is not private: {problem}")
    ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_key_pem} is not the EC key torchship made: remove {tls_dir} to make a new CA")
    cert_pem, key_pem = tls_dir / "server.pem", tls_dir / "server-key.pem"
    if _needs_issue(cert_pem, key_pem, ca_cert, names, now):
        _issue(cert_pem, key_pem, ca_cert, ca_key, names, now)
    return Certificates(cert_pem, key_pem, ca_pem)


def own_certificates(cert: Path, key: Path) -> Certificates:
    """A user's certificate and key, checked: both load, the key is the certificate's, and it is private."""
    cert, key = Path(cert).resolve(), Path(key).resolve()
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read the gateway's certificate or key: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{cert} / {key}: not a PEM certificate and an unencrypted PEM private key ({exc})") from None
    leaf = chain[0]
    if _public_der(leaf.public_key()) != _public_der(private.public_key()):
        raise ConfigError(f"{key} is not the private key of the certificate {cert}")
    problem = private_mode_problem(key)
    if problem:
        raise ConfigError(f"the gateway's private key must be private: {problem}")
    if leaf.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
        raise ConfigError(f"the certificate {cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    return Certificates(cert, key, None)


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, pkcs8, serialization.NoEncryption())


def _make_ca(ca_pem: Path, ca_key_pem: Path, now: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "torchship"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"torchship local CA ({socket.gethostname()})"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_file(ca_key_pem, _key_pem(key), private=True)  # the key first: a CA without its key is useless
    write_file(ca_pem, cert.public_bytes(serialization.Encoding.PEM))


def _needs_issue(cert_pem: Path, key_pem: Path, ca: x509.Certificate, names: list[str], now: dt.datetime) -> bool:
    if not (cert_pem.is_file() and key_pem.is_file()):
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
        key = serialization.load_pem_private_key(key_pem.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # noqa: BLE001  any doubt (unreadable, another CA, no SAN): issue again
        return True
    have = {str(v).lower() for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n.lower() for n in names}
    return (
        not wanted <= have
        or cert.not_valid_after_utc - now < RENEW_BEFORE
        or _public_der(cert.public_key()) != _public_der(key.public_key())
        or bool(private_mode_problem(key_pem))
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _issue(
    cert_pem: Path,
    key_pem: Path,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: list[str],
    now: dt.datetime,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_file(key_pem, _key_pem(key), private=True)
    write_file(cert_pem, cert.public_bytes(serialization.Encoding.PEM))
