"""A tiny ETSI 014 KME over real mutual TLS, for the client's deviant-answer tests.

Not a simulator (that is gateway.kms.sim): a conforming default behaviour plus an ``override``
hook so one test can make it answer exactly the wrong thing it needs. Every request is logged
*before* it is handled, so a test can prove that no request arrived at all.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.kms.sim.pki import Pki, ensure_pki

Override = Callable[[web.Request], Awaitable[web.StreamResponse | None]]

KME_A, KME_B, SAE_A, SAE_B = "KME_A", "KME_B", "SAE_A", "SAE_B"


def make_pki(directory: Path) -> Pki:
    return ensure_pki(directory, kmes={KME_A: [], KME_B: []}, saes=[SAE_A, SAE_B])


def server_context(pki: Pki, kme_id: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.kme_cert(kme_id), pki.kme_key(kme_id))
    ctx.load_verify_locations(pki.ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class MiniKme:
    """Serves /api/v1/keys/{sae}/{status,enc_keys,dec_keys} on 127.0.0.1 with mutual TLS."""

    def __init__(self, pki: Pki, kme_id: str = KME_A, key_size: int = 256) -> None:
        self.pki = pki
        self.kme_id = kme_id
        self.key_size = key_size
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[Any] = []
        self.queries: list[dict[str, str]] = []
        self.issued: dict[str, bytes] = {}  # key_ID -> key bytes, parked for dec_keys
        self.served: list[bytes] = []  # every key byte string ever sent, for leak scans
        self.override: Override | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._log_middleware])
        app.router.add_get("/api/v1/keys/{sae}/status", self._status)
        app.router.add_route("*", "/api/v1/keys/{sae}/enc_keys", self._enc_keys)
        app.router.add_route("*", "/api/v1/keys/{sae}/dec_keys", self._dec_keys)
        app.router.add_get("/static", self._static)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port,
                           ssl_context=server_context(self.pki, self.kme_id))
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.raw_path.split("?")[0]))
        self.queries.append(dict(request.query))
        self.bodies.append(await request.json() if request.can_read_body else None)
        if self.override is not None:
            answer = await self.override(request)
            if answer is not None:
                return answer
        result: web.StreamResponse = await handler(request)
        return result

    def make_keys(self, number: int, size: int) -> list[dict[str, str]]:
        keys = []
        for _ in range(number):
            raw = os.urandom(size // 8)
            key_id = str(uuid.uuid4())
            self.issued[key_id] = raw
            self.served.append(raw)
            keys.append({"key_ID": key_id, "key": base64.b64encode(raw).decode()})
        return keys

    async def _static(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({
            "source_KME_ID": self.kme_id, "target_KME_ID": KME_B, "master_SAE_ID": SAE_A,
            "slave_SAE_ID": request.match_info["sae"], "key_size": self.key_size,
            "stored_key_count": 1000, "max_key_count": 10000, "max_key_per_request": 128,
            "max_key_size": 1024, "min_key_size": 64, "max_SAE_ID_count": 0})

    async def _enc_keys(self, request: web.Request) -> web.Response:
        body = self.bodies[-1] or {}
        if request.method == "GET":
            body = {k: int(v) for k, v in request.query.items()}
        number, size = int(body.get("number", 1)), int(body.get("size", self.key_size))
        return web.json_response({"keys": self.make_keys(number, size)})

    async def _dec_keys(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            ids = [request.query["key_ID"]]
        else:
            ids = [item["key_ID"] for item in self.bodies[-1]["key_IDs"]]
        if any(i not in self.issued for i in ids):
            return web.json_response(
                {"message": "one or more keys specified are not found on KME"}, status=400)
        keys = [{"key_ID": i, "key": base64.b64encode(self.issued.pop(i)).decode()} for i in ids]
        return web.json_response({"keys": keys})


async def drop_connection(request: web.Request) -> web.StreamResponse | None:
    """Handle the request fully, then close the connection instead of answering."""
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(0.05)
    raise ConnectionResetError("dropped by test")


def client_for(pki: Pki, url: str, kme_id: str = KME_A, sae: str = SAE_A, **kwargs: Any) -> Any:
    from gateway.kms import Etsi014Client

    kwargs.setdefault("timeout", 2.0)
    kwargs.setdefault("connect_timeout", 1.0)
    return Etsi014Client(name="site-kms", url=url, kme_id=kme_id, ca_file=pki.ca_cert,
                         cert_file=pki.sae_cert(sae), key_file=pki.sae_key(sae), **kwargs)


def leak_forms(secret: bytes) -> list[str]:
    """The textual forms a leaked key would take in a log line or message."""
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode()]
