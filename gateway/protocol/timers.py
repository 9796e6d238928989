"""A timer heap with lazy deletion: the node's deadlines without scanning every tunnel.

Every schedulable item (a tunnel, a connection) carries ``sched``: the one time it is due, or
None. :meth:`TimerHeap.schedule` pushes a new entry when that time changes; entries whose time no
longer equals their item's ``sched`` are stale and skipped when they surface. ``next`` and
``pop_due`` cost O(log n) per entry, so a wake-up touches only what is due, whatever the number
of tunnels; the heap is rebuilt when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol

__all__ = ["Schedulable", "TimerHeap"]


class Schedulable(Protocol):
    sched: float | None


class TimerHeap:
    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Schedulable]] = []
        self._seq = itertools.count()
        self._live: dict[int, Schedulable] = {}  # id(item) -> item, for compaction

    def schedule(self, item: Schedulable, when: float | None) -> None:
        if when == item.sched:
            return
        item.sched = when
        if when is None:
            self._live.pop(id(item), None)
            return
        self._live[id(item)] = item
        heapq.heappush(self._heap, (when, next(self._seq), item))
        if len(self._heap) > 2 * len(self._live) + 1024:
            self._heap = [(i.sched, next(self._seq), i) for i in self._live.values()
                          if i.sched is not None]
            heapq.heapify(self._heap)

    def schedule_by(self, item: Schedulable, when: float) -> None:
        """Make ``item`` due no later than ``when``: a later time keeps the current entry (the
        item then wakes early once and reschedules itself), which saves a heap push for every
        record of a busy session."""
        if item.sched is None or when < item.sched:
            self.schedule(item, when)

    def cancel(self, item: Schedulable) -> None:
        self.schedule(item, None)

    def next(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].sched != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Schedulable]:
        """Items due at ``now``, each once; their ``sched`` is reset (reschedule them)."""
        out: list[Schedulable] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, item = heapq.heappop(heap)
            if item.sched == when:
                item.sched = None
                self._live.pop(id(item), None)
                out.append(item)
        return out
