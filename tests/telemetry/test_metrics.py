"""The registry's exposition text, checked with an independent parser."""

from __future__ import annotations

import math

import pytest

from gateway.keymaterial import Secret
from gateway.telemetry import GatewayMetrics, MetricsError, Registry
from tests.telemetry.promtext import parse

pytestmark = pytest.mark.unit


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
    assert exp.types == {"demo_total": "counter", "demo_gauge": "gauge"}
    assert exp.value("demo_total", tunnel="wg-a", result="ok") == 3
    assert exp.value("demo_total", tunnel="wg-b", result="kms_error") == 1
    assert exp.value("demo_gauge", kms="kms-1") == 0.25
    assert exp.value("demo_gauge", kms="kms-2") == math.inf
    g.remove(kms="kms-2")
    assert ("demo_gauge", frozenset({("kms", "kms-2")})) not in parse(r.render()).samples


def test_label_values_and_help_are_escaped() -> None:
    r = Registry()
    nasty = 'a "quoted" back\\slash\nnew line, comma} brace'
    r.gauge("esc_gauge", "Help with \\ and\nnewline.", ["tunnel"]).set(1, tunnel=nasty)
    text = r.render()
    assert 'tunnel="a \\"quoted\\" back\\\\slash\\nnew line, comma} brace"' in text
    exp = parse(text)
    assert exp.value("esc_gauge", tunnel=nasty) == 1
    assert exp.helps["esc_gauge"] == "Help with \\ and\nnewline."
    assert text.count("\n") == 3  # the raw newline never breaks a line


def test_histogram_buckets_are_cumulative() -> None:
    r = Registry()
    h = r.histogram("lat_seconds", "Latency.", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    exp = parse(r.render())
    assert exp.types["lat_seconds"] == "histogram"
    assert exp.value("lat_seconds_bucket", le="0.1") == 2  # 0.1 <= 0.1 counts in its bucket
    assert exp.value("lat_seconds_bucket", le="1") == 3
    assert exp.value("lat_seconds_bucket", le="+Inf") == 4
    assert exp.value("lat_seconds_count") == 4
    assert exp.value("lat_seconds_sum") == pytest.approx(3.65)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (lambda r: r.counter("bad-name", "x"), "metric name"),
        (lambda r: r.counter("ok_total", "x", ["__reserved"]), "label name"),
        (lambda r: r.histogram("h", "x", ["le"]), "reserved"),
        (lambda r: r.counter("c_total", "x", ["a"]).inc(a="1", b="2"), "takes labels"),
        (lambda r: r.counter("c_total", "x").inc(-1), "cannot decrease"),
        (lambda r: r.gauge("g", "x", ["kms"]).set(1, kms=b"\x00key"), "must be text"),
        (lambda r: r.gauge("g", "x", ["kms"]).set(1, kms=Secret(b"k")), "must be text"),
    ],
)
def test_invalid_use_is_refused(action: object, match: str) -> None:
    with pytest.raises(MetricsError, match=match):
        action(Registry())  # type: ignore[operator]


def test_duplicate_registration_is_refused() -> None:
    r = Registry()
    r.counter("x_total", "x")
    with pytest.raises(MetricsError, match="already registered"):
        r.gauge("x_total", "x")


def test_gateway_metrics_catalog() -> None:
    now = [100.0]
    m = GatewayMetrics(clock=lambda: now[0])
    m.rekey("wg-a", "ok", 0.042)
    m.rekey("wg-a", "kms_error", 1.5)
    m.set_key_pool("kms-1", 17)
    m.add_keys_wasted("kms-1", 2)
    m.set_alarm("kms_unreachable", True)
    m.set_alarm("key_pool_low", False)
    m.count_event("rekey_completed")
    now[0] = 130.5
    exp = parse(m.registry.render())
    assert exp.value("qkd_gateway_rekeys_total", tunnel="wg-a", result="ok") == 1
    assert exp.value("qkd_gateway_rekeys_total", tunnel="wg-a", result="kms_error") == 1
    assert exp.value("qkd_gateway_rekey_duration_seconds_count") == 2
    assert exp.value("qkd_gateway_rekey_duration_seconds_bucket", le="0.05") == 1
    assert exp.value("qkd_gateway_key_pool_keys", kms="kms-1") == 17
    assert exp.value("qkd_gateway_keys_wasted_total", kms="kms-1") == 2
    assert exp.value("qkd_gateway_tunnel_key_age_seconds", tunnel="wg-a") == 30.5
    assert exp.value("qkd_gateway_alarms_active", alarm="kms_unreachable") == 1
    assert exp.value("qkd_gateway_alarms_active", alarm="key_pool_low") == 0
    assert exp.value("qkd_gateway_events_total", event="rekey_completed") == 1
    m.tunnel_removed("wg-a")
    assert "qkd_gateway_tunnel_key_age_seconds{" not in m.registry.render()
