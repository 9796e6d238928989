"""Rules within a block: XFRM, MQTT, KMS kinds, paths, listener."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]

XFRM = """\
  - name: t1
    kind: xfrm
    interface: xfrm-beta
    peer: beta
    kms: [kms-a]
    xfrm:
      local_address: 192.0.2.1
      remote_address: 198.51.100.2
      local_subnets: [10.1.0.0/16]
      remote_subnets: [10.3.0.0/16]
"""


def errors(write_config: Write, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    return str(err.value)


def test_xfrm_tunnel_loads(write_config: Write) -> None:
    text = BASE + XFRM + "      lifetime: {soft_bytes: 1000, hard_bytes: 2000, hard_time: 10m}\n"
    tunnel = load_config(write_config(text)).tunnels[1]
    assert tunnel.xfrm is not None
    assert tunnel.xfrm.remote_subnets == [ipaddress.ip_network("10.3.0.0/16")]
    assert (tunnel.xfrm.lifetime.hard_bytes, tunnel.xfrm.lifetime.hard_time) == (2000, 600.0)
    assert tunnel.xfrm.lifetime.soft_time is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("      lifetime: {soft_time: 10m, hard_time: 5m}\n",
         "tunnels[1].xfrm.lifetime.soft_time (line 42): soft_time must be below hard_time; "
         "lower soft_time or raise hard_time"),
        ("      lifetime: {hard_time: 1m}\n",
         "tunnels[1].xfrm (line 37): the SAs would expire before the gateway replaces them; "
         "make hard_time longer than rekey_interval"),
        ("      lifetime: {hard_bytes: 0}\n",
         "tunnels[1].xfrm.lifetime.hard_bytes (line 42): '0' is too small; write a number "
         "greater than 0"),
    ],
)
def test_xfrm_lifetimes(write_config: Write, extra: str, expected: str) -> None:
    assert errors(write_config, BASE + XFRM + extra) == expected


def test_xfrm_families_and_overlap(write_config: Write) -> None:
    text = BASE + XFRM.replace("198.51.100.2", "2001:db8::2").replace("10.3.0.0/16", "10.2.5.0/24")
    assert errors(write_config, text) == "\n".join([
        "tunnels[1].xfrm.remote_address (line 39): local_address and remote_address are "
        "different IP versions; use two IPv4 or two IPv6 addresses",
        "tunnels[1].xfrm.remote_subnets[0] (line 41): 10.2.5.0/24 overlaps 10.2.0.0/16 of "
        "tunnels[0].wireguard.allowed_ips[0] (tunnel t0); route each network through one "
        "tunnel only",
    ])


def test_wireguard_block_in_xfrm_tunnel(write_config: Write) -> None:
    text = BASE + XFRM + "    wireguard: {adopt: true, peer_public_key: {file: keys/beta/wireguard.pub}}\n"
    assert errors(write_config, text) == (
        "tunnels[1].wireguard (line 42): a wireguard: block does not belong in a tunnel of kind "
        "xfrm; remove it, or set kind: wireguard")


MQTT = "telemetry:\n  mqtt:\n    url: {url}\n"


def test_mqtt_and_metrics_load(write_config: Write) -> None:
    text = BASE + MQTT.format(url="mqtts://127.0.0.1:8883") + (
        "    ca_file: pki/ca.crt\n    client_cert: pki/sae-alpha.crt\n"
        "    client_key: {file: pki/sae-alpha.key}\n    topic_prefix: ronaqci/alpha\n"
        "  metrics: {listen: 127.0.0.1:9447}\n")
    tel = load_config(write_config(text)).telemetry
    assert tel.mqtt is not None and tel.mqtt.keepalive == 60.0
    assert tel.metrics is not None and str(tel.metrics.listen) == "127.0.0.1:9447"


@pytest.mark.parametrize(
    ("url", "extra", "expected"),
    [
        ("http://127.0.0.1", "", "telemetry.mqtt.url (line 34): 'http://127.0.0.1' must start "
         "with mqtt or mqtts://; write e.g. mqtts://broker.example:8883"),
        ("mqtt://127.0.0.1", "    ca_file: pki/ca.crt\n", "telemetry.mqtt.ca_file (line 35): "
         "ca_file needs an mqtts:// URL; use mqtts://"),
        ("mqtts://127.0.0.1", "    client_cert: pki/sae-alpha.crt\n",
         "telemetry.mqtt.client_key (line 33): client_cert and client_key go together; add "
         "client_key, or remove both"),
        ("mqtt://127.0.0.1", "    topic_prefix: a/#\n", "telemetry.mqtt.topic_prefix (line 35): "
         "topic_prefix cannot hold '#', '+' or end with '/'; write e.g. qkd-gateway/bucharest"),
        ("mqtt://127.0.0.1:x", "", "telemetry.mqtt.url (line 34): 'mqtt://127.0.0.1:x' is not "
         "scheme://host:port; write e.g. mqtts://broker.example:8883"),
    ],
)
def test_mqtt_rules(write_config: Write, url: str, extra: str, expected: str) -> None:
    assert errors(write_config, BASE + MQTT.format(url=url) + extra) == expected


def test_skip_kms_needs_no_kme_id_and_url_rules(write_config: Write) -> None:
    text = BASE.replace("    kind: etsi014\n", "    kind: skip\n").replace("    kme_id: kme-a\n", "")
    kms = load_config(write_config(text)).kms[0]
    assert kms.kind == "skip" and kms.kme_id is None
    bad = BASE.replace("https://127.0.0.1:8443", "http://127.0.0.1:8443")
    assert errors(write_config, bad) == (
        "kms[0].url (line 10): 'http://127.0.0.1:8443' must start with https://; write e.g. "
        "https://127.0.0.1:8443")


def test_paths_resolve_against_the_file(write_config: Write, site_dir: Path) -> None:
    text = "state_dir: state\ncontrol_socket: /run/x.sock\nlisten: {address: '::', port: 17447}\n"
    config = load_config(write_config(BASE + text))
    assert config.state_dir == site_dir / "state"
    assert str(config.control_socket) == "/run/x.sock"
    assert (str(config.listen.address), config.listen.port) == ("::", 17447)


def test_names_and_sae_ids(write_config: Write) -> None:
    text = BASE.replace("  name: alpha\n", "  name: 2024\n").replace(
        "    sae_id: sae-beta\n", "    sae_id: sae-alpha\n")
    assert errors(write_config, text) == (
        "peers[0].sae_id (line 17): 'sae-alpha' is this site's own SAE ID; write the peer's SAE "
        "ID here")
    assert load_config(write_config(BASE.replace("  name: alpha\n", "  name: 2024\n"))
                       ).site.name == "2024"
