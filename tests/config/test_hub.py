"""Hub sites: several WireGuard tunnels on one interface, one WireGuard peer each."""

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import keygen
from gateway.config import ConfigError, load_config
from gateway.daemon.build import wireguard_plans
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

PEER_GAMMA = """\
  - name: gamma
    sae_id: sae-gamma
    address: 198.51.100.3
    public_keys:
      ed25519: {file: keys/beta/ed25519.pub}
      mldsa65: {file: keys/beta/mldsa65.pub}
"""


def hub(spoke_extra: str = "", wg_extra: str = "") -> str:
    text = BASE.replace("tunnels:\n", PEER_GAMMA + "tunnels:\n")
    return text + (
        "  - name: t1\n    kind: wireguard\n    interface: wg-beta\n    peer: gamma\n"
        f"    kms: [kms-a]\n{spoke_extra}    wireguard:\n"
        "      private_key: {file: keys/alpha/wireguard.key}\n"
        "      peer_public_key: {file: keys/gamma/wireguard.pub}\n"
        f"      allowed_ips: [10.3.0.0/16]\n{wg_extra}"
    )


@pytest.fixture
def write_hub(site_dir: Path, write_config: Callable[[str], Path]) -> Callable[[str], Path]:
    gamma = site_dir / "keys" / "gamma"
    if not (gamma / "wireguard.pub").exists():
        gamma.mkdir(parents=True, exist_ok=True)
        keygen.write_wireguard_key(gamma)
    return write_config


def test_two_tunnels_share_one_interface(write_hub: Callable[[str], Path]) -> None:
    cfg = load_config(write_hub(hub()))
    plans = wireguard_plans(cfg.tunnels)
    a, b = plans["t0"], plans["t1"]
    # One interface spec with both peers; each tunnel writes only its own peer's PSK slot.
    assert a.spec is b.spec and len(a.spec.peers) == 2
    assert a.peer_public_key != b.peer_public_key


@pytest.mark.parametrize(("extra", "where", "line"), [
    ("", "      listen_port: 51999\n", "wireguard.listen_port"),
    ("    on_shutdown: teardown\n", "", "on_shutdown"),
])
def test_shared_interface_must_agree(write_hub: Callable[[str], Path], extra: str, where: str,
                                     line: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_hub(hub(extra, where)))
    assert f"tunnels[1].{line}" in str(err.value)
    assert "shared interface 'wg-beta'" in str(err.value)
