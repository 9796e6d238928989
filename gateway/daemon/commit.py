"""Group commit of the state directory's files: many saves, one filesystem sync.

Every activation records its tunnel's state (gateway.daemon.state). Written one at a time on the
event loop, with a file fsync and a directory fsync each, that blocked the loop for the length
of two fsyncs per rekey (5-15 ms on a shared ext4): 73 % of the loop's time at 10,000 tunnels,
and what bounded the rekey rate. Here saves only note the bytes (the last save of a file wins)
and wake :class:`GroupCommit`'s task, which writes everything noted so far in a worker thread
with :func:`write_durably`: temporary files, one sync (a ``syncfs`` for a big batch, an
``fsync`` per file for a small one), renames, one directory fsync. Saves made
while a batch is being written wait for the next one (classic group commit), so the batch grows
with the load and the number of syncs does not. Once woken, the task lingers
:data:`LINGER` (50 ms) before it takes a batch, so that a steady trickle of activations shares
thread hand-offs and syncs too (at most ~20 batches a second).

Crash safety is the same as one write at a time: a file is replaced by rename only after its
content is on disk, so a crash leaves each file old or new, never partial. A save still waiting
when the daemon dies leaves the old file, which is only ever *less* permissive than the data
plane: its fingerprint does not match the key in the data plane, so a restart starts that tunnel
closed (gateway.daemon.lifetime.refusal and the keepers' start).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["LINGER", "RETRY_INTERVAL", "SYNCFS_FROM", "GroupCommit", "write_durably"]

#: After a failed batch (disk full, read-only), the committer tries the files again this often:
#: that is how the store notices that the directory is writable again (saves refuse meanwhile).
#: Short, because a tunnel cannot activate keys until then; a failing write costs ~nothing.
RETRY_INTERVAL = 1.0

#: Once woken, the committer waits this long before it takes the batch, so that the saves of the
#: next few milliseconds share its thread hand-off and its syncs: at 83 activations a second
#: (10,000 tunnels every 120 s) a batch holds ~4 files instead of 1-2. It is also how much
#: longer a save may wait to be on disk (a SIGKILL in that window: the tunnel starts closed).
LINGER = 0.05


def _syncfs_function() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = getattr(ctypes.CDLL(name, use_errno=True), "syncfs", None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNCFS = _syncfs_function()


#: From this many files on, a batch is made durable with one ``syncfs`` of their filesystem
#: instead of one ``fsync`` each. ``syncfs`` also writes out every other dirty page of that
#: filesystem, other programs' included, so its time depends on what they wrote; a few fsyncs
#: depend only on our files. Start-up batches (256 files) take one syncfs; a running daemon's
#: batches (a few activations each) take their fsyncs, all in the worker thread.
SYNCFS_FROM = 8


def _sync_files(paths: list[str], directory: Path) -> None:
    """Every file in ``paths`` durable: one syncfs of their filesystem (Linux) for a batch of
    SYNCFS_FROM files or more, else an fsync each."""
    if _SYNCFS is not None and len(paths) >= SYNCFS_FROM:
        fd = os.open(directory, os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_durably(items: Mapping[Path, bytes]) -> int:
    """Replace each file of ``items`` atomically: temporary files (mode 0600) in the files'
    directory, made durable together (:func:`_sync_files`), renames, one fsync per directory.
    Returns the number of batch syncs made (0 or 1). Raises OSError (every temporary file
    removed) if a step fails; files renamed before the failure are complete."""
    if not items:
        return 0
    written: list[tuple[str, Path]] = []
    try:
        for path, data in items.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            written.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        _sync_files([tmp for tmp, _ in written], next(iter(items)).parent)
        while written:
            tmp, path = written[0]
            os.replace(tmp, path)
            written.pop(0)
    finally:
        for tmp, _ in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    for directory in {p.parent for p in items}:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return 1


class GroupCommit:
    """The pending writes of a store and the task that makes them durable, batch by batch.

    ``report(exc)`` hears of every batch of the committer task that failed (``exc``; a failed
    :meth:`flush` or :meth:`close` raises to its caller instead) and of the first good batch
    after a failure (``None``). While the last batch has failed, :attr:`error` holds its error:
    the store refuses new saves with it (as a synchronous write did) until a retry succeeds.

    Counters (read by tests and benchmarks): ``saves`` noted, ``batches`` written, ``syncs``
    made, ``files_written``, ``failures``."""

    def __init__(self, report: Callable[[OSError | None], None] | None = None) -> None:
        self.report = report
        self.error: OSError | None = None
        self._pending: dict[Path, bytes] = {}
        self._in_flight: frozenset[Path] = frozenset()
        self._unlink_after: set[Path] = set()
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.saves = self.batches = self.syncs = self.files_written = self.failures = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start the committer task on the running loop (the store owns it, not a TaskGroup, so
        a daemon's stop cannot cancel a batch half-way: :meth:`close` ends it)."""
        if self.running:
            return
        self._wake, self._lock, self._closing = asyncio.Event(), asyncio.Lock(), False
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="state-commit")
        if self._pending:
            self._wake.set()

    def put(self, path: Path, data: bytes) -> None:
        """Note a write (replacing any not yet written for that file); it becomes durable with
        the next batch."""
        self._pending[path] = data
        self.saves += 1
        if self._wake is not None:
            self._wake.set()

    def discard(self, path: Path) -> None:
        """The file is being deleted: drop its pending write, and delete it again after the
        batch in flight if that batch writes it."""
        self._pending.pop(path, None)
        if path in self._in_flight:
            self._unlink_after.add(path)

    async def flush(self) -> None:
        """Wait for the batch in flight, then write everything still pending. Raises OSError if
        that write fails (the files stay pending for the committer's retry)."""
        await self._commit()

    async def close(self) -> None:
        """Stop the committer and write what is pending (a clean stop loses no save). Raises
        OSError if that last write fails."""
        self._closing = True
        if self._task is not None:
            assert self._wake is not None and self._stop is not None
            self._wake.set()
            self._stop.set()
            with contextlib.suppress(OSError):
                await self._task
            self._task = None
        await self._commit()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closing:
            await self._wake.wait()
            if LINGER > 0 and not self._closing:
                assert self._stop is not None
                with contextlib.suppress(TimeoutError):  # close() cuts the linger short
                    async with asyncio.timeout(LINGER):
                        await self._stop.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self._commit(report=True)
            except OSError:
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):  # close() wakes a retry at once
                    async with asyncio.timeout(RETRY_INTERVAL):
                        await self._wake.wait()
                self._wake.set()

    async def _commit(self, *, report: bool = False) -> None:
        if self._lock is None:  # never started (tests, tools): write here, synchronously
            self.write_now()
            return
        async with self._lock:  # one batch in flight
            items, self._pending = self._pending, {}
            if not items:
                return
            self._in_flight = frozenset(items)
            try:
                syncs = await asyncio.to_thread(write_durably, items)
            except OSError as exc:
                self._failed(items, exc, report=report)
                raise
            finally:
                self._in_flight = frozenset()
                self._unlink_removed()
            self._written(items, syncs)

    def write_now(self) -> None:
        """Write what is pending here, synchronously (for a store whose committer is not
        running). Raises OSError if that fails (the files are dropped: each is old or new)."""
        items, self._pending = self._pending, {}
        try:
            syncs = write_durably(items)
        except OSError as exc:
            self._failed(items, exc, keep=False)  # as a plain write: failed is not written
            raise
        self._written(items, syncs)

    def _failed(self, items: dict[Path, bytes], exc: OSError, *, keep: bool = True,
                report: bool = False) -> None:
        for path, data in items.items() if keep else ():
            self._pending.setdefault(path, data)  # a save made meanwhile is newer: it wins
        self.failures += 1
        self.error = exc
        if report and self.report is not None:
            self.report(exc)

    def _written(self, items: dict[Path, bytes], syncs: int) -> None:
        self.batches += 1
        self.syncs += syncs
        self.files_written += len(items)
        if self.error is not None:
            self.error = None
            if self.report is not None:
                self.report(None)

    def _unlink_removed(self) -> None:
        for path in self._unlink_after:
            if path not in self._pending:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._unlink_after.clear()
