"""Serve a :class:`~gateway.telemetry.metrics.Registry` at ``http://<listen>/metrics``.

The exposition is written by ``prometheus_client`` (:func:`prometheus_client.exposition.
choose_encoder` picks the Prometheus text format 0.0.4, or OpenMetrics when the scraper's
``Accept`` header asks for it); the server is the daemon's own aiohttp one on its event loop.
Rendering is the one part done off the loop, in the default executor and one scrape at a time:
with 10,000 tunnels it takes about half a second, during which rekeys and watchdog pings must
not wait.

Bound to loopback by default: the exposition reveals tunnel names and KMS state, so exposing it
beyond the host is a deliberate choice (``listen`` in the configuration), not an accident.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway.telemetry.errors import MetricsServerError, TelemetrySettingsError
from gateway.telemetry.metrics import Registry

__all__ = ["DEFAULT_METRICS_PORT", "MetricsServer"]

# Unassigned in the Prometheus default-port allocation list; next to our peer port 7447 in spirit.
DEFAULT_METRICS_PORT = 9447
# A scraper that stalls must not hold a connection (and a task) forever.
_SHUTDOWN_TIMEOUT_S = 5.0


class MetricsServer:
    """An aiohttp server with one route, ``GET /metrics``.

    Args:
        registry: the metrics to expose.
        host: listen address; ``127.0.0.1`` by default.
        port: TCP port; ``0`` picks a free one (tests), read it back from :attr:`port`.
    """

    def __init__(
        self, registry: Registry, host: str = "127.0.0.1", port: int = DEFAULT_METRICS_PORT
    ) -> None:
        if not 0 <= port <= 65535:
            raise TelemetrySettingsError(f"metrics port {port} is not in 0..65535")
        self._registry = registry
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._render_lock = asyncio.Lock()

    @property
    def port(self) -> int:
        """The bound port once started (differs from the requested one when that was 0)."""
        if self._bound_port is None:
            raise RuntimeError("MetricsServer.port is known only after start()")
        return self._bound_port

    async def _handle(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        async with self._render_lock:  # concurrent scrapes queue here, not in threads
            body = await asyncio.to_thread(encoder, self._registry.collectors)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        # Access logs would add a line per scrape (every 15 s) to the journal for no insight.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise MetricsServerError(
                exc.errno,
                f"cannot serve metrics on {self._host}:{self._port}: {exc.strerror}; "
                "choose another metrics listen address or stop the process using it",
            ) from exc
        self._runner = runner
        sockets = [s for s in runner.addresses if isinstance(s, tuple)]
        self._bound_port = int(sockets[0][1]) if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def run(self) -> None:
        """Start, serve until cancelled, then stop: a task body for the daemon's TaskGroup."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
