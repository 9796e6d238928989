"""A valid file loads into typed values with the documented defaults."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, Endpoint, load_config
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit


def test_base_loads_with_defaults(write_config: Callable[[str], Path], site_dir: Path) -> None:
    config = load_config(write_config(BASE))
    assert config.site.name == "alpha"
    assert str(config.state_dir) == "/var/lib/qkd-gateway"
    assert str(config.control_socket) == "/run/qkd-gateway/control.sock"
    assert config.listen.port == 7447
    assert str(config.listen.address) == "0.0.0.0"
    kms = config.kms[0]
    assert (kms.host, kms.port) == ("127.0.0.1", 8443)
    assert (kms.timeouts.connect, kms.timeouts.request) == (5.0, 10.0)
    assert (kms.pool.target, kms.pool.batch, kms.pool.low_water) == (64, 8, 16)
    assert kms.ca_file == site_dir / "pki/ca.crt"
    assert kms.client_key.path == site_dir / "pki/sae-alpha.key"
    peer = config.peers[0]
    assert peer.address == Endpoint("198.51.100.2", 7447)
    pub = (site_dir / "keys/beta/ed25519.pub").read_text().strip()
    assert peer.public_keys.ed25519 == base64.b64decode(pub)
    assert len(peer.public_keys.mldsa65) == 1952
    tunnel = config.tunnels[0]
    assert (tunnel.policy, tunnel.rekey_interval, tunnel.reject_after) == ("qkd+pqc", 120.0, 180.0)
    assert tunnel.on_shutdown == "keep"
    assert tunnel.wireguard is not None
    assert tunnel.wireguard.backend == "auto" and not tunnel.wireguard.adopt
    assert tunnel.wireguard.allowed_ips == [ipaddress.ip_network("10.2.0.0/16")]
    assert config.telemetry.log.format == "auto" and config.telemetry.mqtt is None
    assert config.peer("beta") is peer and config.kms_named("kms-a") is kms


def test_inline_public_keys_ipv6_and_durations(
    write_config: Callable[[str], Path], site_dir: Path
) -> None:
    ed = (site_dir / "keys/beta/ed25519.pub").read_text().strip()
    ml = (site_dir / "keys/beta/mldsa65.pub").read_text().strip()
    text = BASE.replace("ed25519: {file: keys/beta/ed25519.pub}", f"ed25519: {ed}")
    text = text.replace("mldsa65: {file: keys/beta/mldsa65.pub}", f'mldsa65: "{ml}"')
    text = text.replace("address: 198.51.100.2", 'address: "[2001:db8::2]:9000"')
    text += "    rekey_interval: 1m30s\n    reject_after: 2m\n"
    config = load_config(write_config(text))
    assert config.peers[0].address == Endpoint("2001:db8::2", 9000)
    assert str(config.peers[0].address) == "[2001:db8::2]:9000"
    assert config.peers[0].public_keys.ed25519 == base64.b64decode(ed)
    assert (config.tunnels[0].rekey_interval, config.tunnels[0].reject_after) == (90.0, 120.0)
    dumped = config.model_dump(mode="json")
    assert dumped["tunnels"][0]["rekey_interval"] == "1m30s"
    assert dumped["peers"][0]["public_keys"]["ed25519"] == ed


def test_credential_source_resolves_from_credentials_directory(
    write_config: Callable[[str], Path], site_dir: Path, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "wg").write_bytes((site_dir / "keys/alpha/wireguard.key").read_bytes())
    text = BASE.replace("private_key: {file: keys/alpha/wireguard.key}",
                        "private_key: {credential: wg}")
    path = write_config(text)
    config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.tunnels[0].wireguard is not None
    wg_key = config.tunnels[0].wireguard.private_key
    assert wg_key is not None and wg_key.path == creds / "wg"
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(err.value) == (
        "tunnels[0].wireguard.private_key.credential (line 29): credential 'wg' needs "
        "$CREDENTIALS_DIRECTORY, which is not set; run under systemd with "
        "LoadCredential=wg:PATH, or use {file: PATH}"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert str(err.value).startswith(
        f"tunnels[0].wireguard.private_key.credential (line 29): file {tmp_path}/wg does not exist"
    )


def test_adopt_needs_only_the_peer_key(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("      private_key: {file: keys/alpha/wireguard.key}\n", "")
    text = text.replace("      allowed_ips: [10.2.0.0/16]\n", "      adopt: true\n")
    wg = load_config(write_config(text)).tunnels[0].wireguard
    assert wg is not None and wg.adopt and wg.private_key is None


def test_pqc_policy_needs_no_kms(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("    kms: [kms-a]\n", "    policy: pqc\n")
    assert load_config(write_config(text)).tunnels[0].kms == []
