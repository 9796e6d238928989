"""Which certificate fields count as the KME ID, and the TLS context settings."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.kms import KmeIdentityMismatch, KmsTlsError
from gateway.kms.tls import check_kme_identity, client_ssl_context, kme_ids_in_certificate
from tests.kms.test_client_support import SAE_A, make_pki

pytestmark = pytest.mark.unit


def cert_der(cn: str, sans: list[x509.GeneralName]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_cn_uri_and_dns_san_count() -> None:
    der = cert_der("kme.example", [x509.UniformResourceIdentifier("urn:etsi:qkd:kme:KME_7"),
                                   x509.DNSName("KME-DNS"),
                                   x509.UniformResourceIdentifier("https://KME_X")])
    assert kme_ids_in_certificate(der) == ["kme.example", "KME_7", "KME-DNS"]
    for kme_id in ("kme.example", "KME_7", "KME-DNS"):
        check_kme_identity(der, kme_id, "k")


@pytest.mark.parametrize("wrong", ["KME_X", "kme_7", "KME", "urn:etsi:qkd:kme:KME_7", ""])
def test_other_names_do_not_count(wrong: str) -> None:
    der = cert_der("KME_A", [x509.UniformResourceIdentifier("urn:etsi:qkd:kme:KME_7")])
    with pytest.raises(KmeIdentityMismatch, match="check kme_id"):
        check_kme_identity(der, wrong, "k")


def test_no_certificate_is_a_mismatch() -> None:
    with pytest.raises(KmeIdentityMismatch):
        check_kme_identity(None, "KME_A", "k")


def test_context_is_tls12_plus_with_client_cert(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ctx = client_ssl_context(pki.ca_cert, pki.sae_cert(SAE_A), pki.sae_key(SAE_A))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(KmsTlsError, match="not found"):
        client_ssl_context(tmp_path / "nope.crt", pki.sae_cert(SAE_A), pki.sae_key(SAE_A))
    with pytest.raises(KmsTlsError, match="cannot load"):
        client_ssl_context(pki.ca_cert, pki.sae_cert(SAE_A), pki.ca_cert)
