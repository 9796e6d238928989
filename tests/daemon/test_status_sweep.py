"""The reconciliation sweep's look at each tunnel's status (Daemon.refresh_status): published
again only when an input changed that has no event of its own (the session, a handshake seen,
a fail-closed before the first rotation, the low-stock flag), else only the ``kms_stock`` gauge
follows the KMS. At 10,000 tunnels the full status of every tunnel at every pass was most of the
pass (docs/performance.md, "Eighth round"). Building the daemon does no I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.daemon.app import Daemon
from gateway.daemon.esp_keeper import EspKeeper
from gateway.telemetry.tunnel_series import KMS_STOCK
from tests.config.sitefiles import copy_examples

pytestmark = pytest.mark.unit
WG, ESP = "wg-buc-clj", "esp-buc-clj"


@pytest.fixture
def daemon(tmp_path: Path) -> tuple[Daemon, list[str]]:
    d = Daemon(load_config(copy_examples(tmp_path) / "pair" / "bucharest.yaml"))
    published: list[str] = []
    real = d.bus.tunnel_status

    def spy(name: str, status: Any) -> bool:
        published.append(name)
        return real(name, status)

    d.bus.tunnel_status = spy  # type: ignore[method-assign]
    for name in d.keepers:  # as each tunnel's first schedule does
        d.publish_status(name)
    published.clear()
    return d, published


def _sweep(d: Daemon) -> None:
    stocks: dict[tuple[str, ...], int | None] = {}
    for name in d.keepers:
        d.refresh_status(name, stocks)


def test_an_unchanged_tunnel_is_not_published_again_but_its_stock_gauge_follows(
        daemon: tuple[Daemon, list[str]]) -> None:
    d, published = daemon
    _sweep(d)
    assert published == []
    pool = next(p for p in d.pools.values())
    pool._stored_key_count = 4321  # the KMS status poll saw a new stock
    _sweep(d)
    assert published == []
    stocks = {d.metrics.tunnels.get(name, KMS_STOCK) for name in d.keepers}
    assert stocks == {4321.0}


def test_a_handshake_seen_is_published_at_the_next_sweep(
        daemon: tuple[Daemon, list[str]]) -> None:
    d, published = daemon
    hs = d.tunnels.handshakes[WG]
    hs.activated(1, 1_000.0)
    _sweep(d)
    assert published == []  # an activation alone: schedule() publishes it, not the sweep
    hs.observe(1_010.0, 1_020.0)  # WireGuard reports a handshake on the new PSK
    _sweep(d)
    assert published == [WG]
    _sweep(d)
    assert published == [WG]


def test_session_closed_state_and_low_stock_changes_are_published(
        daemon: tuple[Daemon, list[str]]) -> None:
    d, published = daemon
    d.node.tunnels[ESP].enabled_at = 5.0  # the session came up and both ends agree
    _sweep(d)
    assert published == [ESP]
    d.keepers[WG]._closed = True  # failed closed before its first rotation (no event publish)
    _sweep(d)
    assert published == [ESP, WG]
    d.low_stock[ESP] = True
    _sweep(d)
    assert published == [ESP, WG, ESP]
    d.keepers[WG].keys_installed += 1  # a key written without an activation (a fail-closed)
    _sweep(d)
    assert published == [ESP, WG, ESP, WG]
    esp = d.keepers[ESP]
    assert isinstance(esp, EspKeeper)
    esp._active = (0x1001, 0x2002)  # the outbound SA in use changed
    _sweep(d)
    assert published == [ESP, WG, ESP, WG, ESP]
    d._wall_due[WG] = 123.0  # a rotation scheduled (schedule() publishes it too)
    _sweep(d)
    assert published == [ESP, WG, ESP, WG, ESP, WG]


def test_a_removed_tunnel_leaves_nothing_behind(daemon: tuple[Daemon, list[str]]) -> None:
    d, _ = daemon
    d.rekey_due[WG] = 1.0
    d.low_stock[WG] = True
    d.forget_status(WG)  # before the keeper goes: its fail-closed publishes nothing
    assert WG not in d.rekey_due and WG not in d.low_stock
    assert WG not in d._status_stamps and WG not in d._wall_due


def test_a_fail_closed_reported_after_its_keeper_went_publishes_nothing(
        daemon: tuple[Daemon, list[str]]) -> None:
    """A reload that changes a tunnel's kind removes its old keeper, whose fail-closed event
    arrives with the keeper already gone and the tunnel still scheduled."""
    d, published = daemon
    d._wall_due[WG] = 1.0
    d.keepers.pop(WG)
    d._keeper_event("tunnel_failed_closed", tunnel=WG)  # was: KeyError out of the reload
    assert published == []
