"""The one deadline task of all keepers (gateway.daemon.deadlines) with keepers of its own kind:
each records when it was acted on, so the tests see what the scheduler did and in which order."""

import asyncio

import pytest

from gateway.daemon.deadlines import Deadlines

pytestmark = pytest.mark.unit


class Timed:
    """A keeper whose time to act is ``at`` (event loop time; None: nothing due)."""

    def __init__(self, name: str, at: float | None, hold: asyncio.Event | None = None) -> None:
        self.name = name
        self.at = at
        self.hold = hold  # on_due waits for it (a slow data plane)
        self.acted: list[float] = []

    def due_in(self) -> float | None:
        return None if self.at is None else self.at - asyncio.get_running_loop().time()

    async def on_due(self) -> None:
        self.acted.append(asyncio.get_running_loop().time())
        self.at = None  # done: closed
        if self.hold is not None:
            await self.hold.wait()


async def _until(cond: object, limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_each_keeper_is_acted_on_at_its_time_in_order() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    now = loop.time()
    keepers = [Timed(f"k{i}", now + 0.05 * (5 - i)) for i in range(5)]  # k4 first
    for k in keepers:
        d.add(k)
    task = asyncio.create_task(d.run())
    try:
        await _until(lambda: all(k.acted for k in keepers))
        order = sorted(keepers, key=lambda k: k.acted[0])
        assert [k.name for k in order] == ["k4", "k3", "k2", "k1", "k0"]
        for k in keepers:
            assert k.at is None and len(k.acted) == 1
            assert k.acted[0] >= now + 0.05 * (5 - int(k.name[1])) - 0.002  # never early
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_later_time_never_wakes_the_task_and_an_earlier_one_does() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    k = Timed("k", loop.time() + 3600)
    d.add(k)
    task = asyncio.create_task(d.run())
    try:
        await asyncio.sleep(0.05)  # asleep until the hour has passed
        k.at = loop.time() + 7200  # an activation moves the deadline later
        d.arm(k)
        assert not d._wake.is_set()  # no wake-up per rekey
        k.at = loop.time() + 0.05  # a reload shortens reject_after
        d.arm(k)
        assert d._wake.is_set()
        await _until(lambda: k.acted)
        assert len(k.acted) == 1  # the stale entries (3600, 7200 s) never act
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_slow_keeper_does_not_delay_another() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    hold = asyncio.Event()
    slow = Timed("slow", loop.time(), hold=hold)
    fast = Timed("fast", loop.time() + 0.05)
    d.add(slow)
    d.add(fast)
    task = asyncio.create_task(d.run())
    try:
        await _until(lambda: fast.acted)
        assert slow.acted and set(d._running) == {slow}
        slow.at = loop.time()  # due again while acting: re-armed when its action ends
        d.arm(slow)
        assert len(slow.acted) == 1
        hold.set()
        await _until(lambda: len(slow.acted) == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_stale_entries_are_bounded_and_discarded_keepers_never_act() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    keepers = [Timed(f"k{i}", loop.time() + 3600) for i in range(100)]
    for k in keepers:
        d.add(k)
    for step in range(50):  # 50 rekeys each: each leaves a stale entry behind
        for k in keepers:
            k.at = loop.time() + 3600 + step
            d.arm(k)
    assert len(d._heap) <= 2 * len(keepers) + 64
    gone = keepers[0]
    gone.at = loop.time()
    d.arm(gone)
    d.discard(gone)
    task = asyncio.create_task(d.run())
    try:
        await asyncio.sleep(0.1)
        assert not gone.acted and len(d) == 99
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cancelled_with_a_wake_up_pending_ends() -> None:
    """A SIGTERM arriving in the same loop iteration as a change must end the task (the
    Python 3.11 ``wait_for`` hang, see the module docstring)."""
    loop = asyncio.get_running_loop()
    for _ in range(50):
        d = Deadlines()
        k = Timed("k", loop.time() + 3600)
        d.add(k)
        task = asyncio.create_task(d.run())
        for _ in range(3):
            await asyncio.sleep(0)
        k.at = loop.time() + 1800
        d.arm(k)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done and task.cancelled()


async def test_removing_a_keeper_cancels_its_action_in_progress() -> None:
    loop = asyncio.get_running_loop()
    d = Deadlines()
    k = Timed("k", loop.time(), hold=asyncio.Event())  # its action never ends by itself
    d.add(k)
    task = asyncio.create_task(d.run())
    try:
        await _until(lambda: k.acted)
        await asyncio.wait_for(d.remove(k), 5)
        assert not d._running and len(d) == 0 and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
