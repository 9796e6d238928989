"""Mutual TLS towards a KME, and the KME identity check the standard requires.

ETSI GS QKD 014 says the SAE shall not use the API unless it has verified the KME certificate
*and* confirmed the KME ID from it. The chain is verified by OpenSSL against the configured CA
file only (no system store); the KME ID is then checked on every new connection, after the
handshake and before the first request byte is written, by :class:`KmeCheckingConnector`.

Which certificate fields count as carrying KME ID ``X`` (any one is enough):

* the subject common name equals ``X``;
* a SAN URI equals ``urn:etsi:qkd:kme:X`` (the form the project's test PKI issues);
* a SAN DNS name equals ``X`` (for vendors that put the ID there).

Comparison is exact (case-sensitive): KME IDs are opaque strings in the standard.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from aiohttp import ClientRequest, TCPConnector
from aiohttp.client_proto import ResponseHandler
from aiohttp.tracing import Trace
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.kms.errors import KmeIdentityMismatch, KmsTlsError

__all__ = [
    "KME_ID_URI_PREFIX",
    "KmeCheckingConnector",
    "check_kme_identity",
    "client_ssl_context",
    "kme_ids_in_certificate",
]

KME_ID_URI_PREFIX = "urn:etsi:qkd:kme:"


def client_ssl_context(
    ca_file: Path | str, cert_file: Path | str, key_file: Path | str, *, check_hostname: bool = True
) -> ssl.SSLContext:
    """A TLS >= 1.2 client context trusting only ``ca_file`` and presenting the SAE certificate."""
    for what, path in (("CA", ca_file), ("SAE certificate", cert_file), ("SAE key", key_file)):
        if not Path(path).is_file():
            raise KmsTlsError(f"{what} file {str(path)!r} not found: check the kms tls settings")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (ssl.SSLError, ValueError) as exc:
        # The SSL error text names the file problem, never key contents.
        raise KmsTlsError(
            f"cannot load TLS files (ca={str(ca_file)!r}, cert={str(cert_file)!r}): {exc}"
        ) from None
    return ctx


def kme_ids_in_certificate(der: bytes) -> list[str]:
    """Every KME ID the certificate carries (CN, SAN URI urn:etsi:qkd:kme:<ID>, SAN DNS)."""
    cert = x509.load_der_x509_certificate(der)
    ids: list[str] = [
        str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ids
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(KME_ID_URI_PREFIX):
            ids.append(uri[len(KME_ID_URI_PREFIX):])
    ids.extend(san.get_values_for_type(x509.DNSName))
    return ids


def check_kme_identity(der: bytes | None, kme_id: str, kms_name: str) -> None:
    """Raise :class:`KmeIdentityMismatch` unless the certificate carries ``kme_id``."""
    if der is None:
        raise KmeIdentityMismatch(f"kms {kms_name!r}: KME sent no certificate; refusing to use it")
    found = kme_ids_in_certificate(der)
    if kme_id not in found:
        raise KmeIdentityMismatch(
            f"kms {kms_name!r}: KME certificate names {found!r}, not the configured KME ID "
            f"{kme_id!r}: check kme_id in the configuration or the KME's certificate"
        )


class KmeCheckingConnector(TCPConnector):
    """A TCPConnector that refuses a new connection whose peer is not the configured KME.

    The check runs right after the handshake inside ``connect()``, so a mismatching KME never
    receives a request: the connection is closed and :class:`KmeIdentityMismatch` propagates.
    """

    def __init__(self, *, kme_id: str, kms_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kme_id = kme_id
        self._kms_name = kms_name

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], client_timeout: Any
    ) -> ResponseHandler:
        # aiohttp calls this positionally, so the parameter name is ours to choose.
        proto = await super()._create_connection(req, traces, client_timeout)
        transport = proto.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        try:
            if ssl_object is None:
                raise KmsTlsError(f"kms {self._kms_name!r}: connection is not TLS; use https://")
            check_kme_identity(ssl_object.getpeercert(binary_form=True), self._kme_id,
                               self._kms_name)
        except BaseException:
            proto.close()
            raise
        return proto
