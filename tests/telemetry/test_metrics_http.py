"""Scrape the metrics endpoint over real HTTP on loopback."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as text_string_to_metric_families_om,
)

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


async def test_process_metrics_and_openmetrics_negotiation() -> None:
    metrics = GatewayMetrics()
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    try:
        metrics.rekey("wg-a", "ok", 0.01)
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            async with session.get(url) as resp:
                exp = parse(await resp.text())
            for name in ("process_resident_memory_bytes", "process_open_fds",
                         "process_cpu_seconds_total", "process_start_time_seconds"):  # fmt: skip
                assert exp.has(name), name
            # The fds gauge counts this very process's descriptors, sockets included.
            assert exp.value("process_open_fds") >= 3
            # A scraper that asks for OpenMetrics gets it, as Prometheus does by default.
            accept = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
            async with session.get(url, headers=accept) as resp:
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                text = await resp.text()
        assert text.endswith("# EOF\n")
        families = {f.name: f for f in text_string_to_metric_families_om(text)}
        [sample] = [s for s in families["qkd_gateway_rekeys"].samples if s.name.endswith("_total")]
        assert sample.labels == {"tunnel": "wg-a", "result": "ok"} and sample.value == 1
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
