"""What a reload changes: added, removed, changed and untouched tunnels; restart-only settings."""

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.daemon.reload import diff_configs
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

SECOND = (
    "  - name: t1\n    kind: wireguard\n    interface: wg-two\n    peer: beta\n"
    "    kms: [kms-a]\n    wireguard:\n"
    "      private_key: {file: keys/alpha/wireguard.key}\n"
    "      peer_public_key: {file: keys/alpha/wireguard.pub}\n"
    "      allowed_ips: [10.9.0.0/16]\n"
)


def test_diff_names_each_tunnel_once(write_config: Callable[[str], Path]) -> None:
    old = load_config(write_config(BASE + SECOND))
    # t0 untouched, t1 removed, t2 added.
    new = load_config(write_config(BASE + SECOND.replace("t1", "t2")))
    d = diff_configs(old, new)
    assert (d.added, d.removed, d.changed, d.unchanged) == (("t2",), ("t1",), (), ("t0",))
    assert d.restart_needed == () and not d.empty


@pytest.mark.parametrize(("edit", "changed"), [
    (("rekey_interval", "    kms: [kms-a]\n", "    kms: [kms-a]\n    rekey_interval: 60s\n"),
     ("t0",)),
    # A KMS setting the tunnel draws keys from changes the tunnel.
    (("kms", "    kme_id: kme-a\n", "    kme_id: kme-a\n    low_stock: 3\n"), ("t0", "t1")),
    # The peer's address changes the peer, hence its tunnels.
    (("peer", "address: 198.51.100.2", "address: 198.51.100.9"), ("t0", "t1")),
])
def test_changed_tunnels(write_config: Callable[[str], Path],
                         edit: tuple[str, str, str], changed: tuple[str, ...]) -> None:
    _, old_text, new_text = edit
    old = load_config(write_config(BASE + SECOND))
    new_base = BASE.replace(old_text, new_text, 1)
    assert new_base != BASE
    new = load_config(write_config(new_base + SECOND))
    assert diff_configs(old, new).changed == changed


def test_restart_only_settings_are_named(write_config: Callable[[str], Path]) -> None:
    old = load_config(write_config(BASE))
    new = load_config(write_config(BASE.replace("name: alpha", "name: alpha2", 1)
                                   + "listen:\n  port: 7448\n"))
    d = diff_configs(old, new)
    assert d.restart_needed == ("site", "listen") and d.unchanged == ("t0",)
    assert diff_configs(old, old).empty
