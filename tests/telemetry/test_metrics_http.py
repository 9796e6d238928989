"""Scrape the metrics endpoint over real HTTP on loopback."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from gateway.telemetry import GatewayMetrics, MetricsServer, MetricsServerError
from tests.telemetry.promtext import parse

pytestmark = pytest.mark.unit

_TIMEOUT = aiohttp.ClientTimeout(total=5)


async def test_scrape_over_http() -> None:
    metrics = GatewayMetrics()
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    try:
        metrics.rekey('wg-"a"', "ok", 0.01)
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            async with session.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                exp = parse(await resp.text())
            assert exp.value("qkd_gateway_rekeys_total", tunnel='wg-"a"', result="ok") == 1
            assert exp.value("qkd_gateway_info", version="0.1.0") == 1
            metrics.rekey('wg-"a"', "ok", 0.01)
            async with session.get(url) as resp:
                exp = parse(await resp.text())
            assert exp.value("qkd_gateway_rekeys_total", tunnel='wg-"a"', result="ok") == 2
            async with session.get(url.replace("/metrics", "/other")) as resp:
                assert resp.status == 404
    finally:
        await server.stop()


async def test_port_in_use_names_address_and_fix() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = MetricsServer(GatewayMetrics().registry, "127.0.0.1", port)
        with pytest.raises(MetricsServerError, match=f"127.0.0.1:{port}.*choose another"):
            await server.start()
