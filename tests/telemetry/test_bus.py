"""TelemetryBus: one emit reaches the log, the metrics and MQTT (a real broker)."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest
from structlog.testing import capture_logs

from gateway.keymaterial import Secret
from gateway.telemetry import GatewayMetrics, MqttPublisher, MqttSettings, TelemetryBus
from tests.telemetry.broker import Broker
from tests.telemetry.leakscan import leaks, planted_key
from tests.telemetry.promtext import parse


@pytest.mark.unit
def test_emit_logs_and_counts() -> None:
    metrics = GatewayMetrics()
    bus = TelemetryBus(metrics)
    with capture_logs() as logs:
        bus.emit("rekey_completed", tunnel="wg-a", epoch=4)
        bus.emit("rekey_failed", level="error", tunnel="wg-a", reason="kms_timeout")
        bus.emit("rekey_completed", tunnel="wg-b", epoch=1)
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("rekey_completed", "info"),
        ("rekey_failed", "error"),
        ("rekey_completed", "info"),
    ]
    assert logs[0]["tunnel"] == "wg-a" and logs[0]["epoch"] == 4
    exp = parse(metrics.registry.render())
    assert exp.value("qkd_gateway_events_total", event="rekey_completed") == 2
    assert exp.value("qkd_gateway_events_total", event="rekey_failed") == 1
    with pytest.raises(ValueError, match="snake_case"):
        bus.emit("Rekey Completed")


@pytest.mark.unit
def test_alarm_logs_only_changes() -> None:
    metrics = GatewayMetrics()
    bus = TelemetryBus(metrics)
    with capture_logs() as logs:
        assert bus.alarm("key_pool_low", False, kms="kms-1")  # first state: not logged
        assert bus.alarm("key_pool_low", True, kms="kms-1")
        assert not bus.alarm("key_pool_low", True, kms="kms-1")
        assert bus.active_alarms == ["key_pool_low"]
        assert bus.alarm("key_pool_low", False, kms="kms-1")
    assert [(e["event"], e["alarm"]) for e in logs] == [
        ("alarm_raised", "key_pool_low"),
        ("alarm_cleared", "key_pool_low"),
    ]
    assert logs[0]["log_level"] == "warning"
    assert (
        parse(metrics.registry.render()).value("qkd_gateway_alarms_active", alarm="key_pool_low")
        == 0
    )


@pytest.mark.unit
def test_alarms_are_kept_apart_per_tunnel() -> None:
    metrics = GatewayMetrics()
    bus = TelemetryBus(metrics)

    def active() -> float:
        return parse(metrics.registry.render()).value(
            "qkd_gateway_alarms_active", alarm="key_expired"
        )

    with capture_logs() as logs:
        bus.alarm("key_expired", True, peer="site-b", tunnel="wg-a")
        bus.alarm("key_expired", True, peer="site-b", tunnel="wg-b")
        assert active() == 2
        assert bus.alarm("key_expired", False, tunnel="wg-a")
        assert bus.active_alarms == ["key_expired/wg-b"]
        assert active() == 1
        bus.alarm("policy_mismatch", True, peer="site-c", tunnel=None)  # subject from peer
        bus.alarm("site_wide", True)
    assert bus.active_alarms == ["key_expired/wg-b", "policy_mismatch/site-c", "site_wide"]
    assert [(e["event"], e["subject"]) for e in logs] == [
        ("alarm_raised", "wg-a"),
        ("alarm_raised", "wg-b"),
        ("alarm_cleared", "wg-a"),
        ("alarm_raised", "site-c"),
        ("alarm_raised", None),
    ]


@pytest.mark.mqtt
async def test_emit_reaches_mqtt_without_key_bytes(broker: Broker) -> None:
    key = planted_key()
    settings = MqttSettings(host="127.0.0.1", port=broker.port, site="site-b")
    pub = MqttPublisher(settings)
    bus = TelemetryBus(GatewayMetrics(), pub)
    async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as sub:
        await sub.subscribe("qkd-gateway/site-b/#", qos=1)
        task = asyncio.create_task(pub.run())
        try:
            with capture_logs():
                bus.emit("psk_installed", tunnel="wg-a", psk=Secret(key))
                bus.alarm("kms_unreachable", True, "kms-1", last_error=key)
            got: dict[str, bytes] = {}
            async with asyncio.timeout(5):
                async for m in sub.messages:
                    assert isinstance(m.payload, bytes)
                    got[m.topic.value] = m.payload
                    if len(got) == 3:
                        break
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    event = json.loads(got["qkd-gateway/site-b/event/psk_installed"])
    assert event["psk"] == "Secret(<redacted 32 bytes>)"
    alarm = json.loads(got["qkd-gateway/site-b/alarm/kms_unreachable/kms-1"])
    assert alarm["active"] is True and alarm["last_error"] == "<bytes redacted>"
    assert alarm["subject"] == "kms-1"
    assert leaks(b"".join(got.values()).decode("latin-1"), key) == []
