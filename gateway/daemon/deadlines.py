"""One task for every keeper's deadline: a heap of wake-up times with lazy deletion.

Each keeper (gateway.daemon.lifetime.KeyLifetime) has at most one time at which it must act:
its key's ``reject_after`` deadline while open, the next retry of a fail-closed that did not
succeed, or none while closed. It tells :class:`Deadlines` whenever that time may have changed
(:meth:`Deadlines.arm`: every activation, fail-closed, reload of ``reject_after``...), which
pushes ``(when, seq, keeper)`` onto a heap and remembers ``seq`` as the keeper's current entry;
older entries of the same keeper stay in the heap and are skipped when they surface (lazy
deletion), and the heap is rebuilt when stale entries outnumber live ones.

:meth:`Deadlines.run` sleeps until the earliest entry (or until an earlier one is armed), then
starts each due keeper's :meth:`~gateway.daemon.lifetime.KeyLifetime.on_due` as its own task, so
a slow data plane for one tunnel never delays another tunnel's fail-closed; a keeper has at most
one such task at a time and is re-armed when it ends. An activation pushes a later time than the
one the task sleeps for, so rekeys never wake it: at 10,000 tunnels this replaces 10,000 watch
tasks and their events (~1.3 KB each) with one task and a heap entry per tunnel.

Times are the event loop's (monotonic): a keeper converts its boot-clock deadline when it arms,
and :meth:`on_due` checks the deadline again on its own clock, re-arming if it is not yet due.
The wait is ``asyncio.timeout`` around an event, never ``asyncio.wait_for``: on Python 3.11 the
latter can lose a cancellation that arrives as the event is set, and the task would outlive the
daemon's TaskGroup (a SIGTERM that never finishes the stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
from typing import Protocol

__all__ = ["Deadlines", "Due"]

#: Rebuild the heap when it holds more than this many entries per live keeper (plus a margin):
#: each activation leaves one stale entry until its old time passes.
_STALE_FACTOR, _STALE_MARGIN = 2, 64


class Due(Protocol):
    """What the scheduler needs of a keeper."""

    name: str

    def due_in(self) -> float | None:
        """Seconds until the keeper must act (<= 0: now), or None: nothing to do."""
        ...

    async def on_due(self) -> None:
        """Act (fail closed, retry); must not raise."""
        ...


class Deadlines:
    """The wake-up times of many keepers, and the one task that acts on them."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Due]] = []
        self._seq = itertools.count()
        self._entry: dict[Due, int] = {}  # keeper -> seq of its live entry (-1: none)
        self._running: dict[Due, asyncio.Task[None]] = {}  # keepers whose on_due task runs
        self._wake = asyncio.Event()
        self._sleep_until = math.inf  # loop time the run task waits for
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._entry)

    def add(self, keeper: Due) -> None:
        """Watch ``keeper`` from now on (again after a :meth:`discard`)."""
        self._entry[keeper] = -1
        self.arm(keeper)

    def discard(self, keeper: Due) -> None:
        """Stop watching ``keeper`` (its heap entries become stale); an action in progress
        finishes (see :meth:`remove`)."""
        self._entry.pop(keeper, None)

    async def remove(self, keeper: Due) -> None:
        """Stop watching ``keeper`` and cancel its action in progress, if any (a tunnel that
        leaves the configuration: nothing of it may run on while it is taken down)."""
        self.discard(keeper)
        task = self._running.get(keeper)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def arm(self, keeper: Due) -> None:
        """``keeper``'s time to act may have changed: ask it and (re)place its entry."""
        if keeper not in self._entry or keeper in self._running:
            return  # not watched; or acting now, and re-armed when that ends
        delay = keeper.due_in()
        if delay is None:
            self._entry[keeper] = -1
            return
        loop = self._loop or asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        seq = next(self._seq)
        self._entry[keeper] = seq
        heapq.heappush(self._heap, (when, seq, keeper))
        if len(self._heap) > _STALE_FACTOR * len(self._entry) + _STALE_MARGIN:
            self._compact()
        if when < self._sleep_until:
            self._wake.set()

    def _compact(self) -> None:
        live = self._entry
        self._heap = [e for e in self._heap if live.get(e[2]) == e[1]]
        heapq.heapify(self._heap)

    def _pop_due(self, now: float) -> list[Due]:
        due = []
        heap, live = self._heap, self._entry
        while heap and heap[0][0] <= now:
            _when, seq, keeper = heapq.heappop(heap)
            if live.get(keeper) == seq:
                live[keeper] = -1
                due.append(keeper)
        return due

    async def run(self) -> None:
        """Long-running task: act on every keeper whose time has come. Never raises; its
        cancellation cancels the keepers' actions in progress."""
        self._loop = loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                for keeper in self._pop_due(loop.time()):
                    self._running[keeper] = tg.create_task(self._act(keeper),
                                                           name=f"keeper:{keeper.name}")
                self._sleep_until = self._heap[0][0] if self._heap else math.inf
                delay = None if math.isinf(self._sleep_until) else \
                    max(0.0, self._sleep_until - loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    async def _act(self, keeper: Due) -> None:
        try:
            await keeper.on_due()
        finally:
            self._running.pop(keeper, None)
            self.arm(keeper)
