"""A small test PKI for the embedded KME network, the examples and the tests.

Layout of a PKI directory (created on demand, never overwritten)::

    ca.crt  ca.key                 the test CA (ECDSA P-256)
    kme-<KME_ID>.crt / .key        one server certificate per KME: CN = KME ID, and the KME ID
                                   also as a SAN URI ``urn:etsi:qkd:kme:<KME_ID>``; SANs for
                                   every host name / IP address the KME listens on
    <SAE_ID>.crt  <SAE_ID>.key     one client certificate per SAE: CN = SAE ID

Private keys are written with mode 0600. This PKI is for simulation and tests; a production
site uses the certificates its KMS vendor issues.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KME_ID_URI_PREFIX", "Pki", "ensure_pki", "safe_id"]

KME_ID_URI_PREFIX = "urn:etsi:qkd:kme:"
_VALIDITY = dt.timedelta(days=3650)
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_id(value: str) -> str:
    """Reject IDs that cannot safely become file names (no slashes, no dot-dot)."""
    if not _SAFE.match(value) or ".." in value:
        raise ValueError(
            f"ID {value!r} cannot be used as a file name: use letters, digits, '.', '_' or '-'"
        )
    return value


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    def kme_cert(self, kme_id: str) -> Path:
        return self.directory / f"kme-{safe_id(kme_id)}.crt"

    def kme_key(self, kme_id: str) -> Path:
        return self.directory / f"kme-{safe_id(kme_id)}.key"

    def sae_cert(self, sae_id: str) -> Path:
        return self.directory / f"{safe_id(sae_id)}.crt"

    def sae_key(self, sae_id: str) -> Path:
        return self.directory / f"{safe_id(sae_id)}.key"


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key((pki.directory / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _create_ca(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qkd-gateway test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(pki.directory / "ca.key", key)
    _write_cert(pki.ca_cert, cert)


def _issue(
    pki: Pki,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    cert_path: Path,
    key_path: Path,
) -> None:
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, key)
    _write_cert(cert_path, cert)


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def ensure_pki(
    directory: Path | str,
    kmes: dict[str, Iterable[str]] | None = None,
    saes: Iterable[str] = (),
) -> Pki:
    """Create whatever is missing: the CA, a server cert per KME, a client cert per SAE.

    ``kmes`` maps a KME ID to the host names/IP addresses it serves on (``127.0.0.1`` and
    ``localhost`` are always included). Existing files are kept, so several processes and
    repeated ``make example-keys`` runs share one CA.
    """
    pki = Pki(Path(directory))
    pki.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(pki.directory, 0o700)
    if not pki.ca_cert.exists():
        _create_ca(pki)
    for kme_id, hosts in (kmes or {}).items():
        if pki.kme_cert(kme_id).exists():
            continue
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(KME_ID_URI_PREFIX + kme_id)
        ]
        sans += _host_names(["127.0.0.1", "localhost", *hosts])
        _issue(pki, kme_id, sans, ExtendedKeyUsageOID.SERVER_AUTH,
               pki.kme_cert(kme_id), pki.kme_key(kme_id))
    for sae_id in saes:
        if pki.sae_cert(sae_id).exists():
            continue
        _issue(pki, sae_id, [], ExtendedKeyUsageOID.CLIENT_AUTH,
               pki.sae_cert(sae_id), pki.sae_key(sae_id))
    return pki
