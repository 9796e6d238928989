"""ETSI GS QKD 014 client: one kept-alive mutual-TLS connection pool per KME.

One :class:`Etsi014Client` talks to one KME as one SAE (its client certificate). POST is used
for enc_keys and dec_keys unless ``use_get`` is set; even then GET is used only where the
standard allows it (enc_keys with nothing but number/size, dec_keys with a single key ID).

Retry rules (see :mod:`gateway.kms.retry`): status and enc_keys are retried on connection
errors, timeouts and 503; dec_keys is retried only when the request provably never left this
host (the TCP/TLS connection could not be made); if it may have reached the KME and the answer
was lost, :class:`KmsIndeterminate` is raised and the caller starts over with new keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog

from gateway.kms.http import KmeHttp, fetch_once
from gateway.kms.retry import RetryPolicy, call_with_retries
from gateway.kms.types import KeyStatus, QKDKey
from gateway.kms.wire import (
    canonical_key_id,
    parse_json_object,
    parse_key_container,
    parse_status,
)

__all__ = ["Etsi014Client"]

_log = structlog.get_logger("gateway.kms")
_API = "/api/v1/keys/"


class Etsi014Client:
    """A :class:`~gateway.kms.types.KeySource` for one KME over ETSI GS QKD 014.

    Arguments: ``name`` (the KMS name in the configuration, used in logs and errors), ``url``
    (``https://host:port``, the part before ``/api/v1``), ``kme_id`` (the KME ID its certificate
    must carry), ``ca_file``/``cert_file``/``key_file`` (PEM: the only trusted CA, this SAE's
    certificate and key), ``timeout`` (seconds for a whole request), ``connect_timeout``
    (seconds for TCP + TLS), ``retry`` (for status and enc_keys), ``use_get`` (use GET where the
    standard allows it), ``max_connections`` (size of the kept-alive pool), ``check_hostname``
    (also match the url's host against the certificate; the KME ID check always runs).
    Bad TLS files raise :class:`KmsTlsError` here, at construction, not at the first request.
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        kme_id: str,
        ca_file: Path | str,
        cert_file: Path | str,
        key_file: Path | str,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        use_get: bool = False,
        max_connections: int = 4,
        check_hostname: bool = True,
    ) -> None:
        self._http = KmeHttp(
            name=name, url=url, kme_id=kme_id, ca_file=ca_file, cert_file=cert_file,
            key_file=key_file, timeout=timeout, connect_timeout=connect_timeout,
            max_connections=max_connections, check_hostname=check_hostname)
        self._name = name
        self._retry = retry or RetryPolicy()
        self._use_get = use_get

    @property
    def name(self) -> str:
        return self._name

    @property
    def kme_id(self) -> str:
        return self._http.kme_id

    async def __aenter__(self) -> Etsi014Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the three methods -----------------------------------------------------------------

    async def status(self, slave_sae_id: str) -> KeyStatus:
        path = f"{_API}{quote(slave_sae_id, safe='')}/status"

        async def once() -> KeyStatus:
            body = await self._http.exchange("GET", path, "status", None, None)
            return parse_status(parse_json_object(body, self._what("status")))

        return await call_with_retries(once, self._retry, event_context=self._ctx("status"))

    async def get_keys(
        self,
        slave_sae_id: str,
        number: int = 1,
        size: int | None = None,
        *,
        additional_slave_sae_ids: Sequence[str] = (),
        extension_mandatory: Sequence[Mapping[str, Any]] = (),
        extension_optional: Sequence[Mapping[str, Any]] = (),
    ) -> list[QKDKey]:
        """enc_keys: ``number`` keys of ``size`` bits (None: the KME's default size)."""
        if number < 1:
            raise ValueError("number must be >= 1")
        if size is not None and (size <= 0 or size % 8):
            raise ValueError(f"size {size} must be a positive multiple of 8 bits")
        path = f"{_API}{quote(slave_sae_id, safe='')}/enc_keys"
        extras = bool(additional_slave_sae_ids or extension_mandatory or extension_optional)
        request: dict[str, Any] = {"number": number}
        if size is not None:
            request["size"] = size
        if additional_slave_sae_ids:
            request["additional_slave_SAE_IDs"] = list(additional_slave_sae_ids)
        if extension_mandatory:
            request["extension_mandatory"] = [dict(e) for e in extension_mandatory]
        if extension_optional:
            request["extension_optional"] = [dict(e) for e in extension_optional]

        async def once() -> list[QKDKey]:
            if self._use_get and not extras:
                body = await self._http.exchange("GET", path, "enc_keys", request, None)
            else:
                body = await self._http.exchange("POST", path, "enc_keys", None, request)
            return parse_key_container(parse_json_object(body, self._what("enc_keys")),
                                       self._what("enc_keys"), size_bits=size, number=number)

        keys = await call_with_retries(once, self._retry, event_context=self._ctx("enc_keys"))
        _log.debug("kms_keys_fetched", **self._ctx("enc_keys"), slave_sae=slave_sae_id,
                   count=len(keys), key_ids=[k.key_id for k in keys])
        return keys

    async def get_keys_by_id(self, master_sae_id: str, key_ids: Sequence[str]) -> list[QKDKey]:
        """dec_keys: exactly the keys ``key_ids`` that ``master_sae_id`` obtained, in that order."""
        if not key_ids:
            raise ValueError("key_ids must not be empty")
        ids = [canonical_key_id(k) for k in key_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("key_ids contains duplicates")
        path = f"{_API}{quote(master_sae_id, safe='')}/dec_keys"

        async def once() -> bytes:
            if self._use_get and len(ids) == 1:
                return await self._http.exchange("GET", path, "dec_keys", {"key_ID": ids[0]})
            payload = {"key_IDs": [{"key_ID": k} for k in ids]}
            return await self._http.exchange("POST", path, "dec_keys", None, payload)

        body = await fetch_once(once, self._retry,
                                f"kms {self._name!r}: dec_keys for {len(ids)} key(s)")
        what = self._what("dec_keys")
        keys = parse_key_container(parse_json_object(body, what), what, size_bits=None,
                                   expected_ids=ids)
        _log.debug("kms_keys_fetched", **self._ctx("dec_keys"), master_sae=master_sae_id,
                   count=len(keys), key_ids=ids)
        return keys

    # -- one HTTP exchange ----------------------------------------------------------------

    def _what(self, op: str) -> str:
        return f"kms {self._name!r} {op}"

    def _ctx(self, op: str) -> dict[str, object]:
        return {"kms": self._name, "op": op}
