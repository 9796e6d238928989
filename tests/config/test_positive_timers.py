"""Timers where 0 would mean "give up at once" or "expire now" are refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]
KMS_LINE = "    kme_id: kme-a\n"
MQTT = "telemetry:\n  mqtt:\n    url: mqtts://127.0.0.1:8883\n    keepalive: {}\n"


def problems(write_config: Write, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    return str(err.value).splitlines()


def test_zero_timeouts_are_refused(write_config: Write) -> None:
    text = BASE.replace(KMS_LINE, KMS_LINE + "    timeouts: {connect: 0, request: 0s}\n")
    assert problems(write_config, text) == [
        "kms[0].timeouts.connect (line 12): must be longer than 0s; write e.g. 5s",
        "kms[0].timeouts.request (line 12): must be longer than 0s; write e.g. 10s",
    ]


@pytest.mark.parametrize(("value", "shown"), [("0", "0s"), ("4s", "4s"), ("19h", "19h")])
def test_mqtt_keepalive_range(write_config: Write, value: str, shown: str) -> None:
    assert problems(write_config, BASE + MQTT.format(value)) == [
        f"telemetry.mqtt.keepalive (line 35): {shown} is outside 5s to 18h12m15s (MQTT "
        "keep-alive is 16-bit seconds; the client needs at least 5s); write e.g. 60s"]


def test_mqtt_keepalive_in_range_loads(write_config: Write) -> None:
    for value, seconds in (("5s", 5.0), ("65535", 65535.0)):
        mqtt = load_config(write_config(BASE + MQTT.format(value))).telemetry.mqtt
        assert mqtt is not None and mqtt.keepalive == seconds


def test_zero_esp_lifetime_is_refused(write_config: Write) -> None:
    text = BASE.replace("    kind: wireguard\n", "    kind: xfrm\n").replace(
        "    wireguard:\n      private_key: {file: keys/alpha/wireguard.key}\n"
        "      peer_public_key: {file: keys/beta/wireguard.pub}\n"
        "      allowed_ips: [10.2.0.0/16]\n",
        "    xfrm:\n      local_address: 192.0.2.1\n      remote_address: 198.51.100.2\n"
        "      local_subnets: [10.1.0.0/16]\n      remote_subnets: [10.2.0.0/16]\n"
        "      lifetime: {soft_time: 0, hard_time: 0ms}\n")
    assert problems(write_config, text) == [
        "tunnels[0].xfrm.lifetime.hard_time (line 33): must be longer than 0s; write e.g. 10m",
        "tunnels[0].xfrm.lifetime.soft_time (line 33): must be longer than 0s; write e.g. 5m",
    ]
