"""A tunnel that starts closed continues its epochs well above the recorded one: its state file
is written shortly after each activation (group commit), so a daemon killed in between, and a
peer killed with it, would otherwise number their next exchange as the lost one again. A tunnel
that resumed (the data plane holds the recorded key) lost nothing and skips nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.daemon.app import EPOCH_SKIP_AFTER_CLOSED_START, Daemon
from gateway.daemon.state import TunnelState
from tests.config.sitefiles import copy_examples

pytestmark = pytest.mark.unit


async def test_a_closed_start_skips_epochs_and_a_resumed_one_does_not(tmp_path: Path) -> None:
    cfg = load_config(copy_examples(tmp_path) / "pair" / "bucharest.yaml")
    d = Daemon(cfg.model_copy(update={"state_dir": tmp_path / "state"}))
    closed, resumed = "wg-buc-clj", "esp-buc-clj"
    # What the keepers' start leaves (no data plane here): one started closed with epoch 7 on
    # record, one resumed epoch 5 activated a second ago.
    kc, kr = d.keepers[closed], d.keepers[resumed]
    kc._state, kc._closed = TunnelState(closed, 7, 1.0, closed=True), True
    now = kr.clock_now()
    kr._state = TunnelState(resumed, 5, 1.0, boot_id="b", activated_boot=now - 1.0,
                            key_fingerprint="f")
    kr._closed = False
    try:
        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            d._tg = tg
            d.attach_tunnel(closed)
            d.attach_tunnel(resumed)
            assert d.node.tunnels[closed].highest == 7 + EPOCH_SKIP_AFTER_CLOSED_START
            assert d.node.tunnels[resumed].highest == 5
            assert d.node.tunnels[resumed].active_epoch == 5
            raise asyncio.CancelledError  # leave the TaskGroup (its deadline task) at once
    except asyncio.CancelledError:
        pass
