"""The action runner hands each action straight to its tunnel's lane (no dispatcher task in
between), keeps each tunnel's actions in order, and holds actions submitted before it runs or
after it stopped instead of failing the caller (the protocol transport)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from gateway.daemon.actions import ActionRunner
from gateway.protocol import Alarm, Retire
from gateway.telemetry import TelemetryBus

pytestmark = pytest.mark.unit


def _runner() -> tuple[ActionRunner, list[tuple[str, int]], asyncio.Event]:
    runner = ActionRunner(pools={}, sources={}, keepers={}, bus=TelemetryBus(None),
                          feed=lambda e: None)
    done: list[tuple[str, int]] = []
    all_done = asyncio.Event()
    real = runner._perform

    async def perform(action: Any) -> None:
        await real(action)
        done.append((action.tunnel, action.epoch))
        if len(done) == 4:
            all_done.set()

    runner._perform = perform  # type: ignore[method-assign]
    return runner, done, all_done


async def test_actions_go_straight_to_their_lane_in_order() -> None:
    runner, done, all_done = _runner()
    runner.submit(Retire("a", 1))  # before run(): held, then dispatched in order
    task = asyncio.get_running_loop().create_task(runner.run())
    await asyncio.sleep(0)
    assert runner._queue.empty() and "a" in runner._lanes
    runner.submit(Retire("b", 1))
    assert "b" in runner._lanes and len(runner._lanes["b"]) == 1  # no hop in between
    runner.submit(Retire("a", 2))
    runner.submit(Retire("b", 2))
    runner.submit(Alarm("kms_unreachable", "peer-b", "a", "test", True))  # at once
    assert runner._tunnel_alarms == {"a": {"kms_unreachable"}}
    async with asyncio.timeout(30):
        await all_done.wait()
    assert [d for d in done if d[0] == "a"] == [("a", 1), ("a", 2)]
    assert [d for d in done if d[0] == "b"] == [("b", 1), ("b", 2)]
    for _ in range(100):  # a lane ends once its tunnel has nothing left to do
        if not runner._lanes:
            break
        await asyncio.sleep(0)
    assert runner._lanes == {}
    runner.submit(Retire("a", 3))  # a new lane for the next action, in a fresh task
    assert "a" in runner._lanes
    async with asyncio.timeout(30):
        while ("a", 3) not in done:
            await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    runner.submit(Retire("a", 4))  # stopped: held, never run, no error for the transport
    assert runner._queue.qsize() == 1
