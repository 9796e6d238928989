"""The keeper against an in-memory installer that records what a data plane would hold."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.keeper import ALARM_EXPIRED, TunnelKeeper
from gateway.daemon.state import StateStore
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit


class SlotInstaller:
    """Holds one key slot, like WireGuard's PSK slot; read-back is the slot itself."""

    def __init__(self) -> None:
        self.key: Secret | None = None
        self.installs = 0
        self.prepared = False
        self.torn_down: bool | None = None
        self.dropped_sessions = 0

    async def prepare(self) -> None:
        self.prepared = True

    async def install(self, key: Secret, *, drop_session: bool = False) -> None:
        self.key = key
        self.installs += 1
        self.dropped_sessions += drop_session

    async def close(self, teardown: bool) -> None:
        self.torn_down = teardown


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: Callable[[], float], reject_after: float = 0.3):
    events: list[tuple[str, dict[str, Any]]] = []
    alarms: list[tuple[str, bool]] = []
    store = StateStore(tmp_path)
    store.prepare()
    inst = SlotInstaller()
    keeper = TunnelKeeper(
        "t1", reject_after, inst, store,
        emit=lambda e, **f: events.append((e, f)),
        alarm=lambda n, a, **f: alarms.append((n, a)),
        clock=clock,
    )
    return keeper, inst, events, alarms, store


async def test_starts_closed_with_a_random_key_and_alarm(tmp_path: Path) -> None:
    keeper, inst, _events, alarms, _ = make(tmp_path, Clock())
    await keeper.start()
    assert inst.prepared and inst.installs == 1 and inst.key is not None and len(inst.key) == 32
    assert inst.dropped_sessions == 1  # fail closed ends the running session too
    assert keeper.closed
    assert alarms == [(ALARM_EXPIRED, True)]


async def test_activation_installs_saves_and_clears_alarm(tmp_path: Path) -> None:
    clock = Clock()
    keeper, inst, _events, alarms, store = make(tmp_path, clock)
    await keeper.start()
    key = Secret(b"k" * 32)
    await keeper.activate(1, key, ("id-1",), "qkd+pqc", "qkd+pqc")
    assert inst.key == key and not keeper.closed
    assert inst.dropped_sessions == 1  # a rotation keeps the session (only the start dropped)
    assert alarms[-1] == (ALARM_EXPIRED, False)
    saved = store.load("t1")
    assert saved is not None and saved.epoch == 1 and saved.key_ids == ("id-1",)
    with pytest.raises(ValueError):
        await keeper.activate(1, key, (), "qkd+pqc", "qkd+pqc")


async def test_fails_closed_when_deadline_passes(tmp_path: Path) -> None:
    keeper, inst, events, alarms, _ = make(tmp_path, time.time, reject_after=0.2)
    await keeper.start()
    good = Secret(b"g" * 32)
    await keeper.activate(1, good, (), "qkd+pqc", "qkd+pqc")
    task = asyncio.create_task(keeper.watch())
    await asyncio.sleep(0.5)
    task.cancel()
    assert keeper.closed
    assert inst.key != good
    assert alarms[-1] == (ALARM_EXPIRED, True)
    assert events[-1][0] == "tunnel_failed_closed"


async def test_restart_within_reject_after_resumes_without_touching_the_key(tmp_path: Path) -> None:
    clock = Clock()
    keeper, _inst, *_ = make(tmp_path, clock, reject_after=180)
    await keeper.start()
    await keeper.activate(5, Secret(b"a" * 32), (), "qkd+pqc", "qkd+pqc")
    clock.now += 60
    keeper2, inst2, events2, alarms2, _ = make(tmp_path, clock, reject_after=180)
    await keeper2.start()
    assert inst2.installs == 0 and not keeper2.closed and keeper2.epoch == 5
    assert events2[0][0] == "tunnel_resumed" and alarms2 == []
    clock.now += 200
    keeper3, inst3, *_ = make(tmp_path, clock, reject_after=180)
    await keeper3.start()
    assert inst3.installs == 1 and keeper3.closed and keeper3.epoch == 5
