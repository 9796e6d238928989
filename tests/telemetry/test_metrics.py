"""The metric families on prometheus_client, read back with prometheus_client's parser."""

from __future__ import annotations

import base64
import math
import os
import re
import time
from pathlib import Path

import pytest

from gateway.keymaterial import Secret
from gateway.telemetry import GatewayMetrics, MetricsError, Registry
from gateway.telemetry.redact import looks_like_key_material
from tests.telemetry.leakscan import encodings, leaks, planted_key
from tests.telemetry.promtext import parse

pytestmark = pytest.mark.unit

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"


def test_counter_gauge_render_and_parse_back() -> None:
    r = Registry()
    c = r.counter("demo_total", "Demo counter.", ["tunnel", "result"])
    g = r.gauge("demo_gauge", "Demo gauge.", ["kms"])
    c.inc(tunnel="wg-a", result="ok")
    c.inc(2, tunnel="wg-a", result="ok")
    c.inc(tunnel="wg-b", result="kms_error")
    g.set(0.25, kms="kms-1")
    g.set(math.inf, kms="kms-2")
    exp = parse(r.render())
    assert exp.types == {"demo": "counter", "demo_gauge": "gauge"}
    assert exp.value("demo_total", tunnel="wg-a", result="ok") == 3
    assert exp.value("demo_total", tunnel="wg-b", result="kms_error") == 1
    assert exp.value("demo_gauge", kms="kms-1") == 0.25
    assert exp.value("demo_gauge", kms="kms-2") == math.inf
    assert c.value(tunnel="wg-a", result="ok") == 3
    g.remove(kms="kms-2")
    assert not parse(r.render()).has("demo_gauge", kms="kms-2")
    assert g.value(kms="kms-2") is None
    assert "_created" not in r.render()  # no doubled series per counter


def test_label_values_and_help_are_escaped() -> None:
    r = Registry()
    nasty = 'a "quoted" back\\slash, comma} brace'
    r.gauge("esc_gauge", "Help with \\ and\nnewline.", ["tunnel"]).set(1, tunnel=nasty)
    text = r.render()
    assert 'tunnel="a \\"quoted\\" back\\\\slash, comma} brace"' in text
    exp = parse(text)
    assert exp.value("esc_gauge", tunnel=nasty) == 1
    assert exp.helps["esc_gauge"] == "Help with \\ and\nnewline."


def test_histogram_buckets_are_cumulative() -> None:
    r = Registry()
    h = r.histogram("lat_seconds", "Latency.", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    exp = parse(r.render())
    assert exp.types["lat_seconds"] == "histogram"
    assert exp.value("lat_seconds_bucket", le="0.1") == 2  # 0.1 <= 0.1 counts in its bucket
    assert exp.value("lat_seconds_bucket", le="1.0") == 3
    assert exp.value("lat_seconds_bucket", le="+Inf") == 4
    assert exp.value("lat_seconds_count") == 4
    assert exp.value("lat_seconds_sum") == pytest.approx(3.65)
    assert h.count() == 4


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (lambda r: r.counter("bad-name_total", "x"), "metric name"),
        (lambda r: r.counter("no_suffix", "x"), "_total"),
        (lambda r: r.counter("ok_total", "x", ["__reserved"]), "label name"),
        (lambda r: r.histogram("h", "x", ["le"]), "reserved"),
        (lambda r: r.counter("c_total", "x", ["a"]).inc(a="1", b="2"), "takes labels"),
        (lambda r: r.counter("c_total", "x", ["a"]).inc(b="2"), "takes labels"),
        (lambda r: r.counter("c_total", "x").inc(-1), "cannot decrease"),
        (lambda r: r.gauge("g", "x", ["kms"]).set(1, kms=b"\x00key"), "must be text"),
        (lambda r: r.gauge("g", "x", ["kms"]).set(1, kms=Secret(b"k")), "must be text"),
        (lambda r: r.gauge("g", "x", ["kms"]).set(1, kms=True), "must be text"),
        (lambda r: r.gauge("g", "x", ["kms"]).set(1, kms="line\nbreak"), "printable ASCII"),
        (lambda r: r.gauge("g", "x", ["kms"]).set(1, kms="x" * 129), "printable ASCII"),
    ],
)
def test_invalid_use_is_refused(action: object, match: str) -> None:
    with pytest.raises(MetricsError, match=match):
        action(Registry())  # type: ignore[operator]


@pytest.mark.parametrize("form", sorted(encodings(planted_key())))
def test_label_value_that_looks_like_a_key_is_refused_in_every_encoding(form: str) -> None:
    key = planted_key()
    m = GatewayMetrics()
    with pytest.raises(MetricsError) as info:
        m.rekey(encodings(key)[form], "ok", 0.1)
    # Refused before it became a series, and the message does not quote it either.
    assert leaks(str(info.value), key) == []
    assert leaks(m.registry.render(), key) == []


def test_random_keys_look_like_keys_and_names_do_not() -> None:
    for size in (32, 64):
        key = os.urandom(size)
        for text in (key.hex(), base64.b64encode(key).decode(), "0x" + key.hex().upper()):
            assert looks_like_key_material(text), text
    pem = "-----BEGIN PRIVATE KEY-----"
    assert looks_like_key_material(pem)
    names = ["wg-a", "tunnel-bucharest-cluj", "BucharestCentralHospital", "Tunnel-Bucharest-2",
             "RO-Bucuresti-ICI-to-UPB-QKD-01", "EuroQCI-RO-HU-Link-2", "kms_unreachable",
             "hospital-timisoara-icu-backup-link-01", "0.1.0", "a" * 64]  # fmt: skip
    for name in names:
        assert not looks_like_key_material(name), name
        GatewayMetrics().rekey(name, "ok")  # accepted as a label value


def test_duplicate_registration_is_refused() -> None:
    r = Registry()
    r.counter("x_total", "x")
    with pytest.raises(MetricsError, match="already registered"):
        r.gauge("x_total", "x")
    with pytest.raises(MetricsError, match="already registered"):
        r.gauge("x", "x")


def test_registries_are_private() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.rekey("wg-a", "ok")
    assert parse(a.registry.render()).has("qkd_gateway_rekeys_total", tunnel="wg-a", result="ok")
    assert not parse(b.registry.render()).has(
        "qkd_gateway_rekeys_total", tunnel="wg-a", result="ok"
    )


def test_process_metrics_are_exported() -> None:
    exp = parse(GatewayMetrics().registry.render())
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds",
                 "process_cpu_seconds_total", "process_start_time_seconds",
                 "process_virtual_memory_bytes"):  # fmt: skip
        assert exp.has(name), name
    assert exp.value("process_resident_memory_bytes") > 1_000_000
    assert exp.value("process_open_fds") >= 3
    assert 0 <= time.time() - exp.value("process_start_time_seconds") < 86400
    assert any(name.startswith("python_gc_") for name in exp.sample_names)
    assert "python_info" in exp.types


def test_gateway_metrics_catalog() -> None:
    now = [1_800_000_100.0]
    m = GatewayMetrics(clock=lambda: now[0])
    m.rekey("wg-a", "ok", 0.042)
    m.rekey("wg-a", "kms_error", 1.5)
    m.set_key_pool("kms-1", 17)
    m.add_keys_wasted("kms-1", 2)
    m.set_alarm("kms_unreachable", True)
    m.set_alarm("key_pool_low", False)
    m.count_event("rekey_completed")
    now[0] += 30.5
    exp = parse(m.registry.render())
    assert exp.value("qkd_gateway_rekeys_total", tunnel="wg-a", result="ok") == 1
    assert exp.value("qkd_gateway_rekeys_total", tunnel="wg-a", result="kms_error") == 1
    assert exp.value("qkd_gateway_rekey_duration_seconds_count") == 2
    assert exp.value("qkd_gateway_rekey_duration_seconds_bucket", le="0.05") == 1
    assert exp.value("qkd_gateway_key_pool_keys", kms="kms-1") == 17
    assert exp.value("qkd_gateway_keys_wasted_total", kms="kms-1") == 2
    assert exp.value("qkd_gateway_tunnel_key_age_seconds", tunnel="wg-a") == 30.5
    assert exp.value(
        "qkd_gateway_tunnel_key_installed_timestamp_seconds", tunnel="wg-a"
    ) == pytest.approx(1_800_000_100.0)
    assert exp.value("qkd_gateway_alarms_active", alarm="kms_unreachable") == 1
    assert exp.value("qkd_gateway_alarms_active", alarm="key_pool_low") == 0
    assert exp.value("qkd_gateway_events_total", event="rekey_completed") == 1
    assert exp.value("qkd_gateway_info", version="0.1.0") == 1
    m.tunnel_removed("wg-a")
    assert not re.search(r'tunnel="wg-a"', m.registry.render())


def test_tunnel_status_gauges() -> None:
    now = [1_800_000_000.0]
    m = GatewayMetrics(clock=lambda: now[0])
    m.tunnel_status("wg-a", {"state": "up", "epoch": 7, "activated_at": now[0] - 20,
                             "next_rekey_at": now[0] + 100, "kms_stock": 42,
                             "achieved": "qkd+mlkem768+x25519"})  # fmt: skip
    m.tunnel_status("wg-b", {"state": "failed_closed", "epoch": 3, "kms_stock": None})
    exp = parse(m.registry.render())
    assert exp.value("qkd_gateway_tunnel_up", tunnel="wg-a") == 1
    assert exp.value("qkd_gateway_tunnel_failed_closed", tunnel="wg-a") == 0
    assert exp.value("qkd_gateway_tunnel_up", tunnel="wg-b") == 0
    assert exp.value("qkd_gateway_tunnel_failed_closed", tunnel="wg-b") == 1
    assert exp.value("qkd_gateway_tunnel_epoch", tunnel="wg-a") == 7
    assert exp.value("qkd_gateway_tunnel_key_age_seconds", tunnel="wg-a") == 20
    assert exp.value("qkd_gateway_tunnel_next_rekey_timestamp_seconds", tunnel="wg-a") == (
        now[0] + 100
    )
    assert exp.value("qkd_gateway_tunnel_kms_stock_keys", tunnel="wg-a") == 42
    assert not exp.has("qkd_gateway_tunnel_kms_stock_keys", tunnel="wg-b")  # unknown: no series
    m.tunnel_removed("wg-a")
    text = m.registry.render()
    assert 'tunnel="wg-a"' not in text and 'tunnel="wg-b"' in text


def test_every_exported_metric_is_documented() -> None:
    m = GatewayMetrics()
    m.rekey("wg-a", "ok", 0.1)
    m.tunnel_status("wg-a", {"state": "up", "epoch": 1, "next_rekey_at": 1.0, "kms_stock": 1})
    m.set_key_pool("kms-1", 1)
    m.add_keys_wasted("kms-1")
    m.set_alarm("x", True)
    m.count_event("x")
    m.mqtt_dropped.inc()
    m.mqtt_connected.set(1)
    exp = parse(m.registry.render())
    doc = DOCS.read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| [a-z]+ \| ([^|]*)\|", doc, re.MULTILINE))
    for family, kind in exp.types.items():
        if family.startswith("python_gc") or family == "python_info":
            continue
        name = f"{family}_total" if kind == "counter" else family
        assert name in rows, f"{name} is exported but not in docs/operations.md"
        documented = set(re.findall(r"`([a-z_]+)`", rows[name]))
        assert documented == exp.labels[family], (name, documented, exp.labels[family])
