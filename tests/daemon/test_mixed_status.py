"""One daemon, both kinds: a site with a WireGuard and an XFRM tunnel to one peer builds one
keeper of each kind, gives the protocol core an ESP policy for the XFRM tunnel, and reports
both in `qkd-gateway status` and the published tunnel status, each with its own notion of the
key in use (WireGuard: the last handshake's PSK; ESP: the outbound SA, in use from its
activation). Nothing here touches a kernel: building the daemon does no I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.daemon.app import Daemon
from gateway.daemon.esp_keeper import EspKeeper
from gateway.daemon.keeper import TunnelKeeper
from gateway.daemon.status import daemon_status
from gateway.dataplane.xfrm import EspTunnel, reqid_for
from gateway.protocol import Kind
from tests.config.sitefiles import copy_examples

pytestmark = pytest.mark.unit


def test_a_mixed_site_runs_both_kinds_side_by_side(tmp_path: Path) -> None:
    cfg = load_config(copy_examples(tmp_path) / "pair" / "bucharest.yaml")
    d = Daemon(cfg)
    wg, esp = d.keepers["wg-buc-clj"], d.keepers["esp-buc-clj"]
    assert isinstance(wg, TunnelKeeper) and isinstance(esp, EspKeeper)
    assert isinstance(esp.tunnel, EspTunnel) and esp.tunnel.spec.reqid == reqid_for("esp-buc-clj")
    assert d.tunnels.esp_reqids == {reqid_for("esp-buc-clj")}
    assert set(d.tunnels.installers) == {"wg-buc-clj"}  # WireGuard's own parts stay its own
    kinds = {name: t.policy.kind for name, t in d.node.tunnels.items()}
    assert kinds == {"wg-buc-clj": Kind.WIREGUARD, "esp-buc-clj": Kind.ESP}

    st = daemon_status(d)["tunnels"]
    assert (st["wg-buc-clj"]["dataplane"], st["esp-buc-clj"]["dataplane"]) == ("wireguard", "esp")
    assert "wg" in st["wg-buc-clj"] and "esp" not in st["wg-buc-clj"]
    assert "wg" not in st["esp-buc-clj"]
    assert st["esp-buc-clj"]["esp"] == {"key_in_use_epoch": None, "spi_in": None,
                                        "spi_out": None}

    published: dict[str, dict[str, Any]] = {}
    d.bus.tunnel_status = lambda name, status: published.setdefault(name, dict(status))  # type: ignore[method-assign]
    for name in d.keepers:
        d.publish_status(name)
    assert published["esp-buc-clj"]["dataplane"] == "esp"
    assert "key_in_use_epoch" in published["esp-buc-clj"]
    assert "psk_in_use_epoch" not in published["esp-buc-clj"]
    assert published["wg-buc-clj"]["dataplane"] == "wireguard"
    assert "psk_in_use_epoch" in published["wg-buc-clj"]
