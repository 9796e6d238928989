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

import asyncio
import ssl
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from gateway.kms.errors import (
    KmsBadRequest,
    KmsConnectionError,
    KmsError,
    KmsIndeterminate,
    KmsProtocolError,
    KmsTimeout,
    KmsTlsError,
    KmsUnauthorized,
    KmsUnavailable,
)
from gateway.kms.retry import RETRYABLE, RetryPolicy, backoff_delay, call_with_retries
from gateway.kms.tls import KmeCheckingConnector, client_ssl_context
from gateway.kms.types import KeyStatus, QKDKey
from gateway.kms.wire import (
    MAX_BODY_BYTES,
    canonical_key_id,
    error_text,
    parse_json_object,
    parse_key_container,
    parse_status,
    says_not_found,
)

__all__ = ["Etsi014Client"]

_log = structlog.get_logger("gateway.kms")
_API = "/api/v1/keys/"


def _maybe_delivered(exc: BaseException) -> bool:
    # Unknown counts as "maybe": only a failed connect proves the KME saw nothing.
    return bool(getattr(exc, "maybe_delivered", True))


def _tag(exc: KmsError, maybe_delivered: bool) -> KmsError:
    """Record whether the request may have reached the KME (read by the dec_keys path)."""
    exc.maybe_delivered = maybe_delivered  # type: ignore[attr-defined]
    return exc


class Etsi014Client:
    """A :class:`~gateway.kms.types.KeySource` for one KME over ETSI GS QKD 014.

    Arguments: ``name`` (the KMS name in the configuration, used in logs and errors), ``url``
    (``https://host:port``, the part before ``/api/v1``), ``kme_id`` (the KME ID its certificate
    must carry), ``ca_file``/``cert_file``/``key_file`` (PEM: the only trusted CA, this SAE's
    certificate and key), ``timeout`` (seconds for a whole request), ``connect_timeout``
    (seconds for TCP + TLS), ``retry`` (for status and enc_keys), ``use_get`` (use GET where the
    standard allows it), ``max_connections`` (size of the kept-alive pool).
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
        if not url.startswith("https://"):
            raise ValueError(f"kms {name!r}: url {url!r} must start with https:// (ETSI 014)")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError(f"kms {name!r}: timeouts must be positive seconds")
        self._name = name
        self._base = url.rstrip("/")
        self._kme_id = kme_id
        self._ssl: ssl.SSLContext = client_ssl_context(
            ca_file, cert_file, key_file, check_hostname=check_hostname)
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, connect=connect_timeout, sock_connect=connect_timeout)
        self._retry = retry or RetryPolicy()
        self._use_get = use_get
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def kme_id(self) -> str:
        return self._kme_id

    async def __aenter__(self) -> Etsi014Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise KmsConnectionError(f"kms {self._name!r}: client is closed")
        if self._session is None:
            connector = KmeCheckingConnector(
                kme_id=self._kme_id, kms_name=self._name, ssl=self._ssl,
                limit=self._max_connections, keepalive_timeout=30.0)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, raise_for_status=False,
                headers={"Accept": "application/json"})
            # aiohttp silently re-sends an idempotent request (GET) once when a kept-alive
            # connection turns out dead. A dec_keys GET may consume keys: never re-send blindly.
            self._session._retry_connection = False
        return self._session

    # -- the three methods -----------------------------------------------------------------

    async def status(self, slave_sae_id: str) -> KeyStatus:
        path = f"{_API}{quote(slave_sae_id, safe='')}/status"

        async def once() -> KeyStatus:
            body = await self._exchange("GET", path, "status", None, None)
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
                body = await self._exchange("GET", path, "enc_keys", request, None)
            else:
                body = await self._exchange("POST", path, "enc_keys", None, request)
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
        failures = 0
        while True:
            try:
                if self._use_get and len(ids) == 1:
                    body = await self._exchange("GET", path, "dec_keys", {"key_ID": ids[0]}, None)
                else:
                    payload = {"key_IDs": [{"key_ID": k} for k in ids]}
                    body = await self._exchange("POST", path, "dec_keys", None, payload)
                break
            except RETRYABLE as exc:
                if isinstance(exc, KmsUnavailable):
                    raise  # the KME answered with an error: it delivered nothing, but is unwell
                if _maybe_delivered(exc):
                    raise KmsIndeterminate(
                        f"kms {self._name!r}: dec_keys for {len(ids)} key(s) may have reached "
                        f"the KME but the answer was lost ({type(exc).__name__}: {exc}); the "
                        f"keys may be consumed: abort this rekey and start with new keys"
                    ) from exc
                failures += 1
                if failures >= self._retry.attempts:
                    raise
                await asyncio.sleep(backoff_delay(self._retry, failures))
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

    async def _exchange(
        self,
        method: str,
        path: str,
        op: str,
        params: Mapping[str, Any] | None,
        payload: Mapping[str, Any] | None,
    ) -> bytes:
        """One request; returns the 200 body or raises a typed, tagged :class:`KmsError`."""
        session = self._get_session()
        what = self._what(op)
        started = time.perf_counter()
        try:
            async with session.request(
                method, self._base + path, params=dict(params) if params else None,
                json=dict(payload) if payload is not None else None,
            ) as resp:
                status = resp.status
                body = await resp.content.read(MAX_BODY_BYTES + 1)
        except KmsError:
            raise  # the KME identity check: nothing was sent
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _tag(KmsTlsError(f"{what}: KME certificate rejected ({exc.certificate_error}): "
                                   f"check ca_file and the KME's host name"), False) from None
        except aiohttp.ClientSSLError as exc:
            raise _tag(KmsTlsError(f"{what}: TLS handshake failed: {_short(exc)}"), False) from None
        except aiohttp.ConnectionTimeoutError:
            raise _tag(KmsTimeout(f"{what}: no connection within "
                                  f"{self._timeout.connect} s to {self._base}"), False) from None
        except aiohttp.ClientConnectorError as exc:
            raise _tag(KmsConnectionError(f"{what}: cannot connect to {self._base}: "
                                          f"{_short(exc)}"), False) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise _tag(KmsTimeout(f"{what}: no answer within {self._timeout.total} s "
                                  f"from {self._base}"), True) from None
        except aiohttp.ClientError as exc:
            cause = _ssl_cause(exc)
            if cause is not None:
                # Under TLS 1.3 a refused client certificate surfaces on the first read.
                raise _tag(KmsTlsError(f"{what}: KME closed the TLS session ({cause}): check "
                                       f"cert_file/key_file are issued by the KME's CA"),
                           True) from None
            # Under TLS 1.3 a KME that refuses the client certificate just closes the
            # connection after the handshake, which looks like this too: say so.
            raise _tag(KmsConnectionError(
                f"{what}: connection to {self._base} broke ({type(exc).__name__}: "
                f"{_short(exc)}); if this persists, check the KME accepts this SAE's "
                f"certificate (cert_file/key_file)"), True) from None
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        _log.debug("kms_request", **self._ctx(op), method=method, status=status,
                   duration_ms=elapsed_ms)
        if len(body) > MAX_BODY_BYTES:
            raise _tag(KmsProtocolError(f"{what}: answer larger than {MAX_BODY_BYTES} bytes"), True)
        if status == 200:
            return body
        raise _tag(self._status_error(what, status, body, op), True)

    def _status_error(self, what: str, status: int, body: bytes, op: str) -> KmsError:
        text = error_text(body)
        if status == 400:
            return KmsBadRequest(f"{what}: KME rejected the request (400): {text!r}",
                                 server_message=text, not_found=says_not_found(body))
        if status == 401:
            return KmsUnauthorized(
                f"{what}: KME refused this SAE (401): check the SAE certificate and, for "
                f"dec_keys, that the peer named this SAE as slave when it fetched the keys")
        if status == 503:
            return KmsUnavailable(f"{what}: KME error on its side (503): {text!r}")
        if op == "dec_keys" and status == 500 and says_not_found(body):
            # Some KMEs let their web framework answer unknown key IDs with a 500.
            return KmsBadRequest(f"{what}: KME does not know the key IDs (500): {text!r}",
                                 server_message=text, not_found=True)
        if 500 <= status < 600:
            return KmsUnavailable(f"{what}: KME answered {status}: {text!r}")
        hint = ": check the url and the SAE ID" if status == 404 else ""
        return KmsProtocolError(f"{what}: unexpected HTTP status {status}{hint}: {text!r}")


def _ssl_cause(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return str(seen.reason or seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _short(exc: BaseException) -> str:
    return str(exc)[:160]

