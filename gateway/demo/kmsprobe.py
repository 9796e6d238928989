"""Talk to a KME from inside a site namespace, over mutual TLS: the lab's proof that every site
reaches its KMS the way its daemon will (status), and the backup application's key requests.

Deliberately minimal HTTP/1.1 on a socket created in the site's namespace (an HTTP client
library cannot be told which namespace to connect from). It verifies what an SAE must: the
chain against the test CA, the address in the certificate, and the KME ID in the certificate
(ETSI GS QKD 014: an SAE shall not use a KME whose ID it has not confirmed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.demo.errors import DemoError, KmsUnreachable
from gateway.demo.netns import socket_in_netns
from gateway.kms.errors import KmsError
from gateway.kms.retry import RetryPolicy, backoff_delay
from gateway.kms.tls import check_kme_identity, client_ssl_context

__all__ = ["kme_request", "kme_status", "wait_for_kme"]

_MAX_RESPONSE = 64 * 1024  # a status answer is a few hundred bytes
# Starting a KME network with a handful of KMEs takes about a second on this class of machine.
_WAIT_POLICY = RetryPolicy(attempts=1_000_000, base_delay=0.05, max_delay=0.5)


async def kme_request(
    netns: str,
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    kme_id: str,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    body: dict[str, Any] | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """One ETSI GS QKD 014 request from namespace ``netns``, over mutual TLS, checking the KME
    ID in the KME's certificate; the parsed JSON answer (an error unless 200). Key material in
    an answer is the caller's to drop: nothing here logs or quotes a response body of a 200."""
    try:
        ctx = client_ssl_context(ca_file, cert_file, key_file)
    except KmsError as exc:
        raise KmsUnreachable(str(exc)) from None
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    payload = b"" if body is None else json.dumps(body).encode()
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname=host)
            ssl_obj = writer.get_extra_info("ssl_object")
            der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
            check_kme_identity(der, kme_id, kme_id)
            request = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       "Accept: application/json\r\nConnection: close\r\n"
                       + (f"Content-Type: application/json\r\nContent-Length: {len(payload)}"
                          "\r\n" if body is not None else "") + "\r\n")
            writer.write(request.encode() + payload)
            await writer.drain()
            raw = b""
            # Connection: close, so the answer ends at EOF.
            while len(raw) < _MAX_RESPONSE and (chunk := await reader.read(_MAX_RESPONSE)):
                raw += chunk
    except TimeoutError:
        raise KmsUnreachable(
            f"KME {kme_id} at {host}:{port} did not answer from namespace {netns} "
            f"within {timeout:g} s") from None
    except (OSError, ssl.SSLError, KmsError) as exc:
        raise KmsUnreachable(f"KME {kme_id} at {host}:{port} from namespace {netns}: {exc}") \
            from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        else:
            sock.close()
    return _parse(raw, kme_id)


async def kme_status(
    netns: str,
    host: str,
    port: int,
    *,
    kme_id: str,
    slave_sae_id: str,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """GET /api/v1/keys/{slave_sae_id}/status from namespace ``netns``; the parsed JSON."""
    return await kme_request(netns, host, port, "GET",
                             f"/api/v1/keys/{quote(slave_sae_id, safe='')}/status",
                             kme_id=kme_id, ca_file=ca_file, cert_file=cert_file,
                             key_file=key_file, timeout=timeout)


def _parse(raw: bytes, kme_id: str) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise KmsUnreachable(f"KME {kme_id} sent no HTTP response ({status_line[:60]!r})")
    if parts[1] != "200":
        # An error answer holds a message, never key material (only a 200 carries keys).
        raise KmsUnreachable(f"KME {kme_id} answered {status_line}: {body[:200]!r}")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise KmsUnreachable(f"KME {kme_id} sent a status that is not JSON") from None
    if not isinstance(parsed, dict):
        raise KmsUnreachable(f"KME {kme_id} sent a status that is not a JSON object")
    return parsed


async def wait_for_kme(netns: str, host: str, port: int, *, deadline_s: float,
                       check: Callable[[], None] = lambda: None,
                       **kwargs: Any) -> dict[str, Any]:
    """Poll :func:`kme_status` (jittered, capped backoff) until it answers or ``deadline_s``
    passes (then :class:`KmsUnreachable` with the last error). ``check`` runs before every
    retry and may raise to give up early (the KME network's process has exited)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    failures = 0
    while True:
        try:
            return await kme_status(netns, host, port,
                                    timeout=max(0.1, min(5.0, end - loop.time())), **kwargs)
        except DemoError as exc:
            failures += 1
            check()
            if loop.time() + 0.05 >= end:
                raise KmsUnreachable(f"{exc}; gave up after {deadline_s:g} s") from None
            await asyncio.sleep(min(backoff_delay(_WAIT_POLICY, failures),
                                    max(0.0, end - loop.time())))
