"""The daemon hands the protocol core rotation times on the coalescing grid, counted from the
core's own activation time, shows operators the time the core will actually rekey, and spreads
a tunnel's first rotation after a start over the second half of the interval."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.daemon.app import Daemon
from gateway.daemon.schedule import COALESCE_GRID, FIRST_ROTATION_SPREAD, JITTER_FRACTION
from gateway.daemon.state import TunnelState
from tests.config.sitefiles import copy_examples

pytestmark = pytest.mark.unit


async def test_rotation_times_on_the_grid_from_the_core_clock_first_one_spread(
        tmp_path: Path) -> None:
    cfg = load_config(copy_examples(tmp_path) / "pair" / "bucharest.yaml")
    d = Daemon(cfg.model_copy(update={"state_dir": tmp_path / "state"}))
    name = "esp-buc-clj"  # bucharest has the lower SAE ID: the preferred, jittered side
    interval = next(t for t in cfg.tunnels if t.name == name).rekey_interval
    keeper = d.keepers[name]
    # What the keeper's start leaves when the data plane still holds epoch 5, activated 40 s
    # ago (no data plane here).
    keeper._state = TunnelState(name, 5, 1.0, boot_id="b",
                                activated_boot=keeper.clock_now() - 40.0, key_fingerprint="f")
    keeper._closed = False
    try:
        async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
            d._tg = tg
            d.attach_tunnel(name)
            core = d.node.tunnels[name]
            assert core.preferred and core.active_at is not None
            due = core.active_at + core.timers.rekey_after
            assert abs(due - round(due / COALESCE_GRID) * COALESCE_GRID) < 1e-6
            assert interval * (1 - JITTER_FRACTION) - 1e-6 <= core.timers.rekey_after <= interval
            # The status counts from the restored activation, not from the restart.
            assert d.rekey_due[name] == pytest.approx(due)
            assert d.rekey_due[name] < time.monotonic() + interval - 39
            # Its first exchange in this process done (a start): the next rotation is drawn
            # from the second half of the interval; from the second one on, the last 10 %.
            for completed, low in ((1, interval * (1 - FIRST_ROTATION_SPREAD)),
                                   (2, interval * (1 - JITTER_FRACTION))):
                core.completed = completed
                delays = []
                for _ in range(200):
                    d.schedule(name)
                    delays.append(core.timers.rekey_after)
                assert low - 1e-6 <= min(delays) < low + 0.2 * (interval - low)
                assert max(delays) <= interval + 1e-6
            raise asyncio.CancelledError  # leave the TaskGroup (its deadline task) at once
    except asyncio.CancelledError:
        pass
