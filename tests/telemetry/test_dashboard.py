"""docs/grafana/qkd-gateway.json against what the gateway really exports.

Grafana is not installable here (not in Debian, PyPI or npm), so the dashboard is checked
without it: every metric and label its queries use must be in a real GatewayMetrics exposition
and, where Debian's Prometheus is installed, every query is evaluated by a real Prometheus that
scrapes a real /metrics endpoint and must return data.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.telemetry import GatewayMetrics, MetricsServer, TelemetryBus
from tests.telemetry.broker import free_port
from tests.telemetry.promtext import Exposition, parse

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "qkd-gateway.json"
PROMETHEUS = shutil.which("prometheus")
JOB = "qkd-gateway"
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless"}  # fmt: skip
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]


def _variable_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """``label_values(<selector>, <label>)`` of each template variable, as (selector, label)."""
    out = []
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]+)\)", var["query"]["query"])
        assert m, var["query"]
        out.append((m.group(1), m.group(2)))
    return out


def _references(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals say nothing
    labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", text))
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels.update(name.strip() for name in clause.split(",") if name.strip())
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    names = set()
    for m in _IDENT.finditer(text):
        follows = text[m.end() :].lstrip()[:1]
        if m.group() not in KEYWORDS and follows != "(" and not text[: m.start()].endswith("$"):
            names.add(m.group())
    return names, labels


def _family_of(exp: Exposition, sample: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total", ""):
        base = sample.removesuffix(suffix)
        if base in exp.types:
            return base
    raise AssertionError(sample)


def _busy_gateway() -> GatewayMetrics:
    """Metrics with every family holding at least one series, as a running daemon's would."""
    metrics = GatewayMetrics()
    bus = TelemetryBus(metrics)
    now = time.time()
    for i, tunnel in enumerate(("wg-a", "wg-b")):
        bus.tunnel_status(tunnel, {"state": "up" if i == 0 else "failed_closed", "epoch": 3 + i,
                                   "activated_at": now - 40, "next_rekey_at": now + 80,
                                   "kms_stock": 900})  # fmt: skip
        metrics.rekey(tunnel, "ok", 0.02 * (i + 1))
    metrics.rekey("wg-b", "kms_error", 1.2)
    bus.alarm("tunnel_key_expired", True, tunnel="wg-b")
    bus.emit("tunnel_rekeyed", tunnel="wg-a", epoch=3)
    metrics.set_key_pool("kms-1", 12)
    metrics.add_keys_wasted("kms-1", 2)
    metrics.mqtt_connected.set(1)
    metrics.mqtt_dropped.inc(0)
    return metrics


@pytest.mark.unit
def test_dashboard_is_an_importable_grafana_export() -> None:
    dash = _dashboard()
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    assert dash["id"] is None and dash["uid"] and dash["title"]
    for panel in _panels(dash):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
            assert panel["targets"], panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))


@pytest.mark.unit
def test_every_query_uses_exported_metrics_and_labels() -> None:
    exp = parse(_busy_gateway().registry.render())
    dash = _dashboard()
    selectors = [selector for selector, _ in _variable_queries(dash)]
    used: set[str] = set()
    for expr in [*_exprs(dash), *selectors]:
        names, labels = _references(expr)
        assert names, expr
        for name in names:
            assert name in exp.sample_names, f"{name} (in {expr!r}) is not exported"
        known = set().union(*(exp.labels[_family_of(exp, n)] for n in names)) | TARGET_LABELS
        assert labels <= known, f"{expr!r} uses labels {labels - known} its metrics lack"
        used |= names
    for _, label in _variable_queries(dash):
        assert label in TARGET_LABELS | exp.labels["qkd_gateway_tunnel_epoch"]
    # What an operator looks at first must be on the dashboard.
    for name in ("qkd_gateway_tunnel_up", "qkd_gateway_tunnel_failed_closed",
                 "qkd_gateway_rekeys_total", "qkd_gateway_rekey_duration_seconds_bucket",
                 "qkd_gateway_alarms_active", "qkd_gateway_tunnel_kms_stock_keys",
                 "qkd_gateway_key_pool_keys", "qkd_gateway_keys_wasted_total",
                 "process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds"):  # fmt: skip
        assert name in used, f"{name} is not on the dashboard"


@pytest.mark.unit
def test_reference_extraction() -> None:
    names, labels = _references(
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{job=~"$job", x="y{z}"}'
        "[$__rate_interval]))) - time() + on (instance) b_total"
    )
    assert names == {"a_bucket", "b_total"}
    assert labels == {"le", "job", "x", "instance"}


def _query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (http on loopback)
        return dict(json.loads(resp.read()))


def _substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", "1m").replace("$job", JOB)
            .replace("$instance", ".*").replace("$tunnel", ".*"))  # fmt: skip


@pytest.mark.skipif(
    PROMETHEUS is None, reason="needs Debian's prometheus (apt-get install prometheus)"
)
async def test_real_prometheus_evaluates_every_panel_query(tmp_path: Path) -> None:
    metrics = _busy_gateway()
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    web_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: {JOB}, static_configs: "
        f"[{{targets: ['127.0.0.1:{server.port}']}}]}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{web_port}"
    try:
        # Rates need two scrapes of changed counters: keep the gateway busy until the rekey
        # counter has at least three samples, then ask every panel's question.
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            metrics.rekey("wg-a", "ok", 0.03)
            metrics.count_event("tunnel_rekeyed")
            try:
                got = await asyncio.to_thread(
                    _query,
                    base,
                    'count_over_time(qkd_gateway_rekeys_total{result="ok",tunnel="wg-a"}[1m])',
                )
                samples = got["data"]["result"]
                if samples and float(samples[0]["value"][1]) >= 3:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped the gateway"
            await asyncio.sleep(0.5)
        dash = _dashboard()
        for expr in _exprs(dash):
            answer = await asyncio.to_thread(_query, base, _substitute(expr))
            assert answer["status"] == "success", (expr, answer)
            assert answer["data"]["result"], f"no data for {expr!r}"
        for selector, label in _variable_queries(dash):
            answer = await asyncio.to_thread(_query, base, _substitute(selector))
            assert {r["metric"].get(label) for r in answer["data"]["result"]} - {None}, selector
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        await server.stop()
