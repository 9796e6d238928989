"""One kept-alive mutual-TLS HTTP pool towards one KME, shared by the ETSI 014 and SKIP clients.

:class:`KmeHttp` turns every failure into the typed tree of :mod:`gateway.kms.errors` and marks
each error with whether the request may have reached the KME (``maybe_delivered``): only a
failed TCP/TLS connect proves it did not. :func:`fetch_once` uses that mark for calls that
consume keys on the KME and therefore must never be repeated blindly.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

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
from gateway.kms.retry import RETRYABLE, RetryPolicy, backoff_delay
from gateway.kms.tls import KmeCheckingConnector, client_ssl_context
from gateway.kms.wire import MAX_BODY_BYTES, error_text, says_not_found

__all__ = ["KmeHttp", "fetch_once", "maybe_delivered"]

T = TypeVar("T")
_log = structlog.get_logger("gateway.kms")
# Idle kept-alive connections are closed after this long; KMEs commonly drop idle clients after
# 60 s or more, and a shorter keep-alive avoids writing into a connection the KME already closed.
_KEEPALIVE_S = 30.0
# aiohttp rounds every timeout above its "ceil threshold" (default 5 s) UP to the next whole
# second of the loop clock, so a configured 6 s could fire after 6.99 s. A timeout is a bound the
# operator chose: never round it (an infinite threshold disables the rounding).
_NO_CEIL = float("inf")


def maybe_delivered(exc: BaseException) -> bool:
    """Whether the request behind ``exc`` may have reached the KME (unknown counts as yes)."""
    return bool(getattr(exc, "maybe_delivered", True))


def _tag(exc: KmsError, delivered: bool) -> KmsError:
    exc.maybe_delivered = delivered  # type: ignore[attr-defined]
    return exc


class KmeHttp:
    """HTTPS to one KME: mutual TLS, KME identity check per connection, timeouts, typed errors."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        kme_id: str,
        ca_file: Path | str,
        cert_file: Path | str,
        key_file: Path | str,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        check_hostname: bool,
        not_found_statuses: frozenset[int] = frozenset(),
    ) -> None:
        if not url.startswith("https://"):
            raise ValueError(f"kms {name!r}: url {url!r} must start with https://")
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError(f"kms {name!r}: timeouts must be positive seconds")
        self.name = name
        self.base = url.rstrip("/")
        self.kme_id = kme_id
        self._ssl: ssl.SSLContext = client_ssl_context(
            ca_file, cert_file, key_file, check_hostname=check_hostname)
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, connect=connect_timeout, sock_connect=connect_timeout,
            ceil_threshold=_NO_CEIL)
        self._max_connections = max_connections
        self._not_found_statuses = not_found_statuses
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            # Not a KmsConnectionError: retrying a closed client can never succeed.
            raise _tag(KmsError(f"kms {self.name!r}: client is closed (aclose() was called)"),
                       False)
        if self._session is None:
            connector = KmeCheckingConnector(
                kme_id=self.kme_id, kms_name=self.name, ssl=self._ssl,
                limit=self._max_connections, keepalive_timeout=_KEEPALIVE_S,
                timeout_ceil_threshold=_NO_CEIL)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, raise_for_status=False,
                headers={"Accept": "application/json"})
            # aiohttp silently re-sends an idempotent request (GET) once when a kept-alive
            # connection turns out dead. A dec_keys GET may consume keys: never re-send blindly.
            self._session._retry_connection = False
        return self._session

    async def exchange(
        self,
        method: str,
        path: str,
        op: str,
        params: Mapping[str, Any] | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> bytes:
        """One request; returns the 200 body or raises a typed, tagged :class:`KmsError`."""
        session = self._get_session()
        what = f"kms {self.name!r} {op}"
        started = time.perf_counter()
        try:
            async with session.request(
                method, self.base + path, params=dict(params) if params else None,
                json=dict(payload) if payload is not None else None,
            ) as resp:
                status = resp.status
                body = await resp.content.read(MAX_BODY_BYTES + 1)
        except KmsError as exc:
            # The KME identity check: the connection was refused before anything was sent.
            raise _tag(exc, False) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _tag(KmsTlsError(f"{what}: KME certificate rejected ({exc.certificate_error}): "
                                   f"check ca_file and the KME's host name"), False) from None
        except aiohttp.ClientSSLError as exc:
            raise _tag(KmsTlsError(f"{what}: TLS handshake failed: {_short(exc)}"), False) from None
        except aiohttp.ConnectionTimeoutError:
            raise _tag(KmsTimeout(f"{what}: no connection within "
                                  f"{self._timeout.connect} s to {self.base}"), False) from None
        except aiohttp.ClientConnectorError as exc:
            raise _tag(KmsConnectionError(f"{what}: cannot connect to {self.base}: "
                                          f"{_short(exc)}"), False) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise _tag(KmsTimeout(f"{what}: no answer within {self._timeout.total} s "
                                  f"from {self.base}"), True) from None
        except aiohttp.ClientError as exc:
            cause = _ssl_cause(exc)
            if cause is not None:
                raise _tag(KmsTlsError(f"{what}: KME closed the TLS session ({cause}): check "
                                       f"cert_file/key_file are issued by the KME's CA"),
                           True) from None
            # Under TLS 1.3 a KME that refuses the client certificate just closes the
            # connection after the handshake, which looks like this too: say so.
            raise _tag(KmsConnectionError(
                f"{what}: connection to {self.base} broke ({type(exc).__name__}: "
                f"{_short(exc)}); if this persists, check the KME accepts this SAE's "
                f"certificate (cert_file/key_file)"), True) from None
        _log.debug("kms_request", kms=self.name, op=op, method=method, status=status,
                   duration_ms=round((time.perf_counter() - started) * 1000, 2))
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
            # KMEs answer 401 both for a certificate they do not accept and (several of them)
            # for key IDs they do not know or that were issued to another SAE: keep the KME's
            # own words and name both causes rather than guess.
            causes = ("this SAE's certificate is not accepted by the KME (check cert_file/"
                      "key_file and that the KME registered this SAE ID)")
            if op == "dec_keys":
                causes += ("; or the key IDs are unknown to this KME, already delivered, or "
                           "were requested by the peer for another slave SAE ID")
            return KmsUnauthorized(f"{what}: KME refused the request (401): {text!r}; likely "
                                   f"causes: {causes}", server_message=text,
                                   not_found=says_not_found(body))
        if status == 503:
            return KmsUnavailable(f"{what}: KME error on its side (503): {text!r}")
        if status in self._not_found_statuses or (
                op == "dec_keys" and status == 500 and says_not_found(body)):
            # Some KMEs let their web framework answer unknown key IDs with a 500.
            return KmsBadRequest(f"{what}: KME does not know the key IDs ({status}): {text!r}",
                                 server_message=text, not_found=True)
        if 500 <= status < 600:
            return KmsUnavailable(f"{what}: KME answered {status}: {text!r}")
        hint = ": check the url and the SAE ID" if status == 404 else ""
        return KmsProtocolError(f"{what}: unexpected HTTP status {status}{hint}: {text!r}")


async def fetch_once(call: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str) -> T:
    """Run a key-consuming call; repeat it only when it provably never reached the KME.

    A lost answer (timeout, broken connection after sending) raises :class:`KmsIndeterminate`;
    an error answer (503, 400, ...) is raised as is, since it delivered nothing.
    """
    failures = 0
    while True:
        try:
            return await call()
        except RETRYABLE as exc:
            if isinstance(exc, KmsUnavailable):
                raise  # the KME answered with an error: it delivered nothing, but is unwell
            if maybe_delivered(exc):
                raise KmsIndeterminate(
                    f"{what} may have reached the KME but the answer was lost "
                    f"({type(exc).__name__}: {exc}); the keys may be consumed: abort this "
                    f"rekey and start with new keys") from exc
            failures += 1
            if failures >= policy.attempts:
                raise
            await asyncio.sleep(backoff_delay(policy, failures))


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
