"""Retained per-tunnel status on a real mosquitto, its gauges, and that no key leaks from either."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from gateway.keymaterial import Secret
from gateway.telemetry import (
    GatewayMetrics,
    MqttPublisher,
    MqttSettings,
    TelemetryBus,
    configure_logging,
)
from tests.telemetry.broker import Broker
from tests.telemetry.leakscan import leaks, planted_key
from tests.telemetry.mqttobs import PREFIX, Observer, observe, payload_json, running
from tests.telemetry.promtext import parse

pytestmark = pytest.mark.mqtt

SITE = "site-t"
FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 3.0}
NOW = 1_800_000_000.0


def _topic(tunnel: str) -> str:
    return f"{PREFIX}/{SITE}/tunnel/{tunnel}/status"


def _status(epoch: int, **extra: Any) -> dict[str, Any]:
    return {
        "state": "up",
        "epoch": epoch,
        "policy": "qkd+mlkem768",
        "achieved": "qkd+mlkem768+x25519",
        "activated_at": NOW - 10,
        "next_rekey_at": NOW + 110,
        "key_age_s": 10.0,
        "kms_stock": 500 - epoch,
        **extra,
    }


def _bus(broker: Broker, **kw: Any) -> tuple[TelemetryBus, MqttPublisher]:
    settings = MqttSettings(host="127.0.0.1", port=broker.port, site=SITE, **{**FAST, **kw})
    metrics = GatewayMetrics(clock=lambda: NOW)
    pub = MqttPublisher(settings, metrics)
    return TelemetryBus(metrics, pub), pub


async def _retained_now(broker: Broker, topic: str) -> list[aiomqtt.Message]:
    """What a subscriber starting now gets on ``topic``: the retained message or nothing.

    The broker queues retained messages at SUBSCRIBE, before anything published later; so once
    our own non-retained sentinel on the same topic arrives, every retained one has arrived.
    """
    async with observe(broker, topic=topic) as late:
        await late.client.publish(topic, b"sentinel", qos=1, retain=False)
        await late.wait_for(topic, lambda m: m.payload == b"sentinel")
        return [m for m in late.on(topic) if m.payload != b"sentinel"]


async def _wait_count(obs: Observer, topic: str, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(obs.on(topic)) < n:
        assert time.monotonic() < deadline, [m.payload for m in obs.on(topic)]
        await asyncio.sleep(0.01)


async def test_late_subscriber_sees_status_and_removal_clears_it(broker: Broker) -> None:
    bus, pub = _bus(broker)
    async with observe(broker) as live, running(pub):
        await live.wait_for(f"{PREFIX}/{SITE}/status")
        assert bus.tunnel_status("wg-a", _status(1))
        assert bus.tunnel_status("wg-b", _status(4, state="failed_closed"))
        await live.wait_for(_topic("wg-b"))
        first = await live.wait_for(_topic("wg-a"))
        # Only an age counter changed: nothing is published...
        assert not bus.tunnel_status("wg-a", _status(1, key_age_s=11.0))
        # ...until something real changes (a rekey).
        assert bus.tunnel_status("wg-a", _status(2, key_age_s=0.0))
        await live.wait_for(_topic("wg-a"), lambda m: payload_json(m)["epoch"] == 2)
        assert [payload_json(m)["epoch"] for m in live.on(_topic("wg-a"))] == [1, 2]
        assert first.retain is False  # live delivery; the retained copy is checked below

        [late] = await _retained_now(broker, _topic("wg-a"))
        assert late.retain
        body = payload_json(late)
        assert body["tunnel"] == "wg-a" and body["site"] == SITE and body["ts"].endswith("Z")
        assert (body["state"], body["epoch"], body["kms_stock"]) == ("up", 2, 498)
        assert body["achieved"] == "qkd+mlkem768+x25519"
        assert body["next_rekey_at"] == NOW + 110

        bus.alarm("tunnel_key_expired", True, tunnel="wg-b")
        bus.tunnel_removed("wg-b")
        cleared = await live.wait_for(_topic("wg-b"), lambda m: m.payload == b"")
        assert cleared.payload == b""
        assert await _retained_now(broker, _topic("wg-b")) == []
        assert bus.active_alarms == []  # a removed tunnel keeps no alarm
        alarm = await live.wait_for(
            f"{PREFIX}/{SITE}/alarm/tunnel_key_expired/wg-b",
            lambda m: payload_json(m)["active"] is False,
        )
        assert payload_json(alarm)["reason"] == "tunnel_removed"
        assert len(await _retained_now(broker, _topic("wg-a"))) == 1  # the other one stays

    exp = parse(bus.metrics.registry.render())  # type: ignore[union-attr]
    assert exp.value("qkd_gateway_tunnel_epoch", tunnel="wg-a") == 2
    assert exp.value("qkd_gateway_tunnel_up", tunnel="wg-a") == 1
    assert exp.value("qkd_gateway_tunnel_key_age_seconds", tunnel="wg-a") == 10
    assert exp.value("qkd_gateway_tunnel_kms_stock_keys", tunnel="wg-a") == 498
    assert not exp.has("qkd_gateway_tunnel_epoch", tunnel="wg-b")


async def test_statuses_are_republished_after_a_broker_restart(broker: Broker) -> None:
    bus, pub = _bus(broker, backoff_initial_s=1.0, backoff_max_s=1.0)
    async with running(pub):
        async with observe(broker) as obs:
            bus.tunnel_status("wg-a", _status(1))
            await obs.wait_for(_topic("wg-a"))
        broker.stop()
        for epoch in (2, 3):  # changes while the broker is away: only the latest goes out
            bus.tunnel_status("wg-a", _status(epoch))
        bus.tunnel_status("wg-c", _status(9))
        broker.start()  # no persistence: the broker forgot every retained message
        async with observe(broker) as obs:
            await obs.wait_for(_topic("wg-c"), t=10)
            got = await obs.wait_for(_topic("wg-a"), t=10)
            assert payload_json(got)["epoch"] == 3
            assert [payload_json(m)["epoch"] for m in obs.on(_topic("wg-a"))] == [3]
        [late] = await _retained_now(broker, _topic("wg-a"))
        assert payload_json(late)["epoch"] == 3


async def test_status_of_a_tunnel_removed_while_down_is_deleted(broker: Broker) -> None:
    # A previous run published wg-old and wg-a; this run's configuration only has wg-a.
    async with observe(broker) as previous:
        for tunnel in ("wg-old", "wg-a"):
            await previous.client.publish(_topic(tunnel), b'{"epoch":0}', qos=1, retain=True)
    bus, pub = _bus(broker, stale_status_grace_s=2.0)
    async with observe(broker) as live, running(pub):
        await live.wait_for(f"{PREFIX}/{SITE}/status", lambda m: m.payload == b"online")
        bus.tunnel_status("wg-a", _status(1))  # reported within the grace period: kept
        await live.wait_for(_topic("wg-old"), lambda m: m.payload == b"", t=15)
        assert await _retained_now(broker, _topic("wg-old")) == []
        [kept] = await _retained_now(broker, _topic("wg-a"))
        assert payload_json(kept)["epoch"] == 1
        assert all(m.payload for m in live.on(_topic("wg-a")))  # never deleted meanwhile


async def test_many_tunnels_reach_the_broker(broker: Broker,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mqtt")
    bus, pub = _bus(broker)
    names = [f"wg-{i:04d}" for i in range(300)]
    async with observe(broker, topic=f"{PREFIX}/{SITE}/tunnel/+/status") as obs, running(pub):
        for i, name in enumerate(names):
            bus.tunnel_status(name, _status(i))
        await _wait_count(obs, _topic(names[-1]), 1)
        deadline = time.monotonic() + 10
        while len({m.topic.value for m in obs.messages}) < len(names):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    for name in names:
        assert len(obs.on(_topic(name))) == 1, name
    # Batches of PUBACK waits are by design: aiomqtt's "pending publish calls" warning (one line
    # per publish past 10 pending) must not flood the operator's log.
    assert [r.getMessage() for r in caplog.records if r.name == "mqtt"] == []


@pytest.mark.usefixtures("restore_logging")
async def test_no_key_in_status_payloads_metrics_or_logs(broker: Broker) -> None:
    key = planted_key()
    out = io.StringIO()
    configure_logging("json", "debug", out)
    bus, pub = _bus(broker)
    async with observe(broker) as obs, running(pub):
        bus.tunnel_status("wg-a", _status(1, psk=Secret(key), raw=key,
                                         nested={"keys": [bytearray(key), (Secret(key),)]}))  # fmt: skip
        bus.emit("tunnel_rekeyed", tunnel="wg-a", epoch=1, psk=Secret(key))
        msg = await obs.wait_for(_topic("wg-a"))
        await obs.wait_for(f"{PREFIX}/{SITE}/event/tunnel_rekeyed")
        bus.tunnel_removed("wg-a")
        await obs.wait_for(_topic("wg-a"), lambda m: m.payload == b"")
    body = payload_json(msg)
    assert body["psk"] == "Secret(<redacted 32 bytes>)"
    assert body["raw"] == "<bytes redacted>"
    assert body["redaction_violation"] is True
    payloads = b"\n".join(m.payload for m in obs.messages if isinstance(m.payload, bytes))
    metrics = bus.metrics.registry.render()  # type: ignore[union-attr]
    logs = out.getvalue()
    assert "mqtt_payload_redacted" in logs  # the leak attempt itself is logged (no bytes)
    for where, text in (("mqtt", payloads.decode("latin-1")), ("metrics", metrics),
                        ("logs", logs)):  # fmt: skip
        assert leaks(text, key) == [], where


@pytest.mark.unit
def test_status_without_mqtt_only_feeds_gauges() -> None:
    metrics = GatewayMetrics(clock=lambda: NOW)
    bus = TelemetryBus(metrics)
    with capture_logs():
        assert bus.tunnel_status("wg-a", _status(1))
        assert not bus.tunnel_status("wg-a", _status(1, key_age_s=99.0, expires_in_s=3.0))
        # The KMS's stock moved, nothing else: no publish, but the gauge follows it.
        assert not bus.tunnel_status("wg-a", _status(1, kms_stock=12))
        assert parse(metrics.registry.render()).value(
            "qkd_gateway_tunnel_kms_stock_keys", tunnel="wg-a") == 12
        key_ids = ["k-1"]
        assert bus.tunnel_status("wg-a", _status(1, key_ids=key_ids))
        key_ids.append("k-2")  # mutated by the caller: still seen as a change
        assert bus.tunnel_status("wg-a", _status(1, key_ids=key_ids))
    exp = parse(metrics.registry.render())
    assert exp.value("qkd_gateway_tunnel_epoch", tunnel="wg-a") == 1
    with pytest.raises(ValueError, match="tunnel"):
        bus.tunnel_status("wg/a", _status(1))
    assert json.dumps(bus.active_alarms) == "[]"
