"""MqttPublisher against a real mosquitto on loopback (plain and mutual TLS)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gateway.keymaterial import Secret
from gateway.telemetry import GatewayMetrics, MqttPublisher, MqttSettings, TelemetrySettingsError
from tests.telemetry.broker import GATEWAY_SAE, Broker
from tests.telemetry.leakscan import leaks, planted_key
from tests.telemetry.mqttobs import PREFIX, observe, payload_json, running
from tests.telemetry.promtext import parse

pytestmark = pytest.mark.mqtt

SITE = "site-a"
FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 3.0}


def _settings(broker: Broker, **kw: Any) -> MqttSettings:
    return MqttSettings(**{"host": "127.0.0.1", "port": broker.port, "site": SITE, **FAST, **kw})


async def test_event_delivered_without_key_bytes(broker: Broker) -> None:
    key = planted_key()
    pub = MqttPublisher(_settings(broker))
    async with observe(broker) as obs, running(pub):
        status = await obs.wait_for(f"{PREFIX}/{SITE}/status")
        assert status.payload == b"online"
        pub.publish_event("rekey_completed", tunnel="wg-a", epoch=3, duration_ms=12.5)
        pub.publish_event(
            "key_material_mishandled",
            psk=Secret(key),
            raw=key,
            nested={"list": [key, Secret(key)], "tuple": (bytearray(key),)},
            event="spoofed_name",
        )
        first = payload_json(await obs.wait_for(f"{PREFIX}/{SITE}/event/rekey_completed"))
        assert first["event"] == "rekey_completed" and first["site"] == SITE
        assert (first["tunnel"], first["epoch"], first["duration_ms"]) == ("wg-a", 3, 12.5)
        assert first["ts"].endswith("Z")
        assert "redaction_violation" not in first
        bad_msg = await obs.wait_for(f"{PREFIX}/{SITE}/event/key_material_mishandled")
        bad = payload_json(bad_msg)
        assert bad["event"] == "key_material_mishandled"  # fields cannot override reserved keys
        assert bad["psk"] == "Secret(<redacted 32 bytes>)"
        assert bad["raw"] == "<bytes redacted>"
        assert bad["nested"]["tuple"] == ["<bytes redacted>"]
        assert bad["redaction_violation"] is True
        assert not bad_msg.retain
        everything = b"\n".join(m.payload for m in obs.messages if isinstance(m.payload, bytes))
        assert leaks(everything.decode("latin-1"), key) == []


async def test_alarm_state_is_retained_for_late_subscribers(broker: Broker) -> None:
    pub = MqttPublisher(_settings(broker))
    topic = f"{PREFIX}/{SITE}/alarm/kms_unreachable"
    async with observe(broker) as live, running(pub):
        pub.set_alarm("kms_unreachable", True, kms="kms-1")
        await live.wait_for(topic, lambda m: payload_json(m)["active"] is True)
        assert pub.active_alarms == ["kms_unreachable"]
        async with observe(broker) as late:
            retained = await late.wait_for(topic)
            assert retained.retain and payload_json(retained)["active"] is True
            assert payload_json(retained)["kms"] == "kms-1"
            assert (await late.wait_for(f"{PREFIX}/{SITE}/status")).retain
        pub.set_alarm("key_expired", True, "wg-a", peer="site-b")
        per_tunnel = await live.wait_for(f"{PREFIX}/{SITE}/alarm/key_expired/wg-a")
        assert (payload_json(per_tunnel)["subject"], payload_json(per_tunnel)["peer"]) == (
            "wg-a",
            "site-b",
        )
        assert pub.active_alarms == ["key_expired/wg-a", "kms_unreachable"]
        pub.set_alarm("key_expired", False, "wg-a")
        pub.set_alarm("kms_unreachable", False, kms="kms-1")
        await live.wait_for(topic, lambda m: payload_json(m)["active"] is False)
        async with observe(broker) as later:
            state = await later.wait_for(topic)
            assert state.retain and payload_json(state)["active"] is False
        assert pub.active_alarms == []


async def test_mutual_tls(broker: Broker) -> None:
    pub = MqttPublisher(_settings(broker, port=broker.tls_port, **broker.client_tls(GATEWAY_SAE)))
    async with observe(broker, tls=True) as obs, running(pub):
        assert (await obs.wait_for(f"{PREFIX}/{SITE}/status")).payload == b"online"
        pub.publish_event("tunnel_up", tunnel="wg-a")
        assert (
            payload_json(await obs.wait_for(f"{PREFIX}/{SITE}/event/tunnel_up"))["tunnel"] == "wg-a"
        )
        assert pub.connected


async def test_tls_without_client_certificate_never_connects(broker: Broker) -> None:
    files = broker.client_tls(GATEWAY_SAE)
    pub = MqttPublisher(_settings(broker, port=broker.tls_port, tls_ca=files["tls_ca"]))
    async with observe(broker) as obs, running(pub):
        await asyncio.sleep(1.0)
        assert not pub.connected
        assert obs.on(f"{PREFIX}/{SITE}/status") == []


async def test_last_will_on_abrupt_close(broker: Broker, tmp_path: Path) -> None:
    script = tmp_path / "publisher.py"
    script.write_text(
        textwrap.dedent(f"""
            import asyncio
            from gateway.telemetry import MqttPublisher, MqttSettings
            s = MqttSettings(host="127.0.0.1", port={broker.port}, site="{SITE}", keepalive_s=5)
            asyncio.run(MqttPublisher(s).run())
        """)
    )
    topic = f"{PREFIX}/{SITE}/status"
    async with observe(broker) as obs:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).parents[2])
        try:
            await obs.wait_for(topic, lambda m: m.payload == b"online", t=60)
        finally:
            proc.send_signal(signal.SIGKILL)  # no DISCONNECT packet: the broker must use the will
            proc.wait(timeout=5)
        will = await obs.wait_for(topic, lambda m: m.payload == b"offline", t=30)
        assert will.payload == b"offline"
    async with observe(broker) as late:
        assert (await late.wait_for(topic)).payload == b"offline"  # and it was retained


async def test_graceful_stop_publishes_offline(broker: Broker) -> None:
    pub = MqttPublisher(_settings(broker))
    topic = f"{PREFIX}/{SITE}/status"
    async with observe(broker) as obs:
        async with running(pub):
            await obs.wait_for(topic, lambda m: m.payload == b"online")
        await obs.wait_for(topic, lambda m: m.payload == b"offline")


async def test_reconnect_after_broker_restart(broker: Broker) -> None:
    metrics = GatewayMetrics()
    # Reconnect delays of 0.5-1 s give the observer time to subscribe after the restart, before
    # the publisher is back and flushes what it queued.
    pub = MqttPublisher(_settings(broker, backoff_initial_s=1.0, backoff_max_s=1.0), metrics)
    alarm = f"{PREFIX}/{SITE}/alarm/key_pool_low"
    async with running(pub):
        async with observe(broker) as obs:
            pub.set_alarm("key_pool_low", True, kms="kms-1")
            await obs.wait_for(alarm)
        broker.stop()
        pub.publish_event("rekey_completed", tunnel="wg-a", n=1)
        pub.set_alarm("kms_unreachable", True, kms="kms-1")
        broker.start()  # no persistence: the broker forgot every retained message
        async with observe(broker) as obs:
            event = await obs.wait_for(f"{PREFIX}/{SITE}/event/rekey_completed", t=10)
            assert payload_json(event)["n"] == 1
            await obs.wait_for(f"{PREFIX}/{SITE}/alarm/kms_unreachable")
        assert pub.connected
        async with observe(broker) as late:
            # Republished on reconnect, so the state survives the broker's amnesia.
            assert payload_json(await late.wait_for(alarm))["active"] is True
            assert (await late.wait_for(f"{PREFIX}/{SITE}/status")).payload == b"online"
    exp = parse(metrics.registry.render())
    assert exp.value("qkd_gateway_mqtt_connected") == 0  # stopped now


async def test_queue_drops_oldest_events_never_alarms(broker: Broker) -> None:
    metrics = GatewayMetrics()
    pub = MqttPublisher(_settings(broker, queue_size=3), metrics)
    for i in range(5):
        pub.publish_event("rekey_completed", n=i)
    for i in range(5):
        pub.set_alarm(f"alarm_{i}", True)
    assert pub.dropped == 2
    assert metrics.mqtt_dropped.value() == 2
    async with observe(broker) as obs, running(pub):
        for i in range(5):
            await obs.wait_for(f"{PREFIX}/{SITE}/alarm/alarm_{i}")
        topic = f"{PREFIX}/{SITE}/event/rekey_completed"
        await obs.wait_for(topic, lambda m: payload_json(m)["n"] == 4)
        assert [payload_json(m)["n"] for m in obs.on(topic)] == [2, 3, 4]


@pytest.mark.unit
def test_settings_report_every_problem(tmp_path: Path) -> None:
    with pytest.raises(TelemetrySettingsError) as info:
        MqttPublisher(
            MqttSettings(
                host="",
                site="site/a",
                port=0,
                topic_prefix="qkd/#",
                tls_cert=tmp_path / "missing.crt",
                queue_size=0,
            )
        )
    text = str(info.value)
    for fragment in (
        "mqtt.host",
        "mqtt.port 0",
        "mqtt.site 'site/a'",
        "mqtt.topic_prefix 'qkd/#'",
        "set together",
        "missing.crt' is not a readable file",
        "queue_size 0",
    ):
        assert fragment in text


@pytest.mark.unit
def test_event_names_must_be_snake_case() -> None:
    pub = MqttPublisher(MqttSettings(host="127.0.0.1", site=SITE))
    for bad in ("Rekey", "rekey/done", "#", "", "a" * 65):
        with pytest.raises(ValueError, match="snake_case"):
            pub.publish_event(bad)
    with pytest.raises(ValueError, match="alarm name"):
        pub.set_alarm("kms+down", True)
    with pytest.raises(ValueError, match="alarm subject"):
        pub.set_alarm("key_expired", True, "wg/a")


@pytest.mark.unit
def test_settings_from_configuration_url(tmp_path: Path) -> None:
    plain = MqttSettings.from_url("mqtt://broker.example", "site-a", keepalive_s=60.0)
    assert (plain.host, plain.port, plain.tls, plain.keepalive_s) == (
        "broker.example",
        1883,
        False,
        60,
    )
    secure = MqttSettings.from_url("mqtts://[::1]:8884", "site-a", topic_prefix="ops/qkd")
    assert (secure.host, secure.port, secure.tls) == ("::1", 8884, True)
    assert secure.topic("status") == "ops/qkd/site-a/status"
    assert MqttSettings.from_url("mqtts://b", "s").port == 8883
    for bad in ("http://b", "mqtt://", "mqtt://b:99999"):
        with pytest.raises(TelemetrySettingsError, match=r"mqtt\.url"):
            MqttSettings.from_url(bad, "s")
