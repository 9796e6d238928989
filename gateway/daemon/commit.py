"""Group commit of the state directory's files: many saves, one filesystem sync.

Every activation records its tunnel's state (gateway.daemon.state). Written one at a time on the
event loop, with a file fsync and a directory fsync each, that blocked the loop for the length
of two fsyncs per rekey (5-15 ms on a shared ext4): 73 % of the loop's time at 10,000 tunnels,
and what bounded the rekey rate. Here saves only note the bytes (the last save of a file wins)
and wake :class:`GroupCommit`'s task, which writes everything noted so far in a worker thread
with :func:`write_durably`: each new version written into the file's spare, one sync (a
``syncfs`` for a big batch, an ``fsync`` per file for a small one), the spares swapped in by
name (``renameat2`` RENAME_EXCHANGE: the old version becomes the next spare, so a save allocates
and frees no inode), one directory fsync. Saves made
while a batch is being written wait for the next one (classic group commit), so the batch grows
with the load and the number of syncs does not. Once woken, the task lingers
:data:`LINGER` (50 ms) before it takes a batch, so that a steady trickle of activations shares
thread hand-offs and syncs too (at most ~20 batches a second).

Crash safety is the same as one write at a time: a file is replaced by a rename only after its
content is on disk, and a spare is overwritten only once the swap that retired it is durable,
so a crash leaves each file old or new, never partial. A save still waiting
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
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

__all__ = ["LINGER", "RETRY_INTERVAL", "SYNCFS_FROM", "GroupCommit", "remove", "spare_path",
           "unsettle", "write_durably"]

#: After a failed batch (disk full, read-only), the committer tries the files again this often:
#: that is how the store notices that the directory is writable again (saves refuse meanwhile).
#: Short, because a tunnel cannot activate keys until then; a failing write costs ~nothing.
RETRY_INTERVAL = 1.0

#: Once woken, the committer waits this long before it takes the batch, so that the saves of the
#: next few milliseconds share its thread hand-off and its syncs: at 83 activations a second
#: (10,000 tunnels every 120 s) a batch holds ~4 files instead of 1-2. It is also how much
#: longer a save may wait to be on disk (a SIGKILL in that window: the tunnel starts closed).
LINGER = 0.05


def _libc_function(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    lib = ctypes.util.find_library("c")
    if lib is None:
        return None
    fn = getattr(ctypes.CDLL(lib, use_errno=True), name, None)
    if fn is None:
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNCFS = _libc_function("syncfs", [ctypes.c_int])
#: renameat2(2) (glibc >= 2.28); RENAME_EXCHANGE swaps two names atomically (Linux >= 3.15 on
#: ext4, xfs, btrfs, tmpfs; a file system without it answers EINVAL).
_RENAMEAT2 = _libc_function("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                          ctypes.c_char_p, ctypes.c_uint])
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: The spare is written in place: no O_TRUNC (that frees its blocks, and the write allocates
#: them again); its length is set after the write. Never through a symbolic link.
_SPARE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


#: From this many files on, a batch is made durable with one ``syncfs`` of their filesystem
#: instead of one ``fsync`` each. ``syncfs`` also writes out every other dirty page of that
#: filesystem, other programs' included, so its time depends on what they wrote; a few fsyncs
#: depend only on our files. Start-up batches (256 files) take one syncfs; a running daemon's
#: batches (a few activations each) take their fsyncs, all in the worker thread.
SYNCFS_FROM = 8

#: Directories whose renames are known durable in this process (a directory fsync after the
#: last batch that wrote there succeeded). A spare is only written in place once the exchange
#: that made it a spare is durable; a directory not in here is fsynced before a batch writes in
#: it: the first batch of a process (a predecessor killed between its exchanges and its
#: directory fsync) and the first after a failed one.
_SETTLED: set[Path] = set()
#: One :func:`write_durably` at a time in this process: two writes of one file would share its
#: spare (a batch whose await was cancelled goes on in its worker thread while the next starts).
#: Also guards :data:`_SETTLED`.
_WRITE_LOCK = threading.Lock()


def unsettle() -> None:
    """Forget which directories are settled: called when this process takes the state
    directory's lock, after which another process may have written there."""
    with _WRITE_LOCK:
        _SETTLED.clear()


def _wait_for_writes() -> None:
    with _WRITE_LOCK:  # returns once no write_durably runs in this process
        pass


def spare_path(path: Path) -> Path:
    """The file a new version of ``path`` is written into before it takes ``path``'s name; after
    the swap it holds the previous version, to be overwritten by the next (hidden, mode 0600,
    in the same directory; never read back)."""
    return path.with_name(f".spare-{path.name}")


def remove(path: Path) -> None:
    """Delete ``path`` and its spare (each may be missing)."""
    for p in (path, spare_path(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _sync_batch(fds: list[int], directories: Iterable[Path]) -> None:
    """Files written durable: ``fds`` fsynced each; none given (a big batch, its files closed
    already): one ``syncfs`` per file system holding ``directories``. Raises OSError if that
    fails."""
    for fd in fds:
        os.fsync(fd)
    if fds:
        return
    assert _SYNCFS is not None
    devices: set[int] = set()
    for directory in directories:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            device = os.fstat(dir_fd).st_dev
            if device not in devices:
                devices.add(device)
                if _SYNCFS(dir_fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), str(directory))
        finally:
            os.close(dir_fd)


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_spare(spare: Path, data: bytes, directory: Path, sync: bool) -> None:
    fd = os.open(spare, _SPARE_FLAGS, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, len(data))
        if sync:
            _sync_batch([fd], (directory,))
    finally:
        os.close(fd)


def _swap_in(spare: Path, path: Path) -> None:
    """``path`` names the spare's content from now on, atomically. With RENAME_EXCHANGE the
    spare's name keeps the old inode, to be written in place next time (no inode is allocated
    or freed: on ext4 a fresh file per save cost 1.3-12x the CPU, most of it in the inode
    allocator skipping recently freed inodes, bench/fullstack/state_swap.py); without (no
    previous file, a file system without it), a plain rename."""
    if _RENAMEAT2 is not None and _RENAMEAT2(_AT_FDCWD, os.fsencode(spare), _AT_FDCWD,
                                             os.fsencode(path), _RENAME_EXCHANGE) == 0:
        return
    os.replace(spare, path)


def write_durably(items: Mapping[Path, bytes]) -> int:
    """Replace each file of ``items`` atomically: its new content written into its spare (mode
    0600, same directory: :func:`spare_path`), made durable (one ``syncfs`` for a batch of
    :data:`SYNCFS_FROM` files or more, else an ``fsync`` each), swapped in by name
    (:func:`_swap_in`), one fsync per directory. Returns the number of batch syncs made (0 or
    1). Raises OSError if a step fails: files swapped before the failure are complete, the
    others untouched, the batch's spares removed (the next write in those directories starts
    with a directory fsync). Crash safety: a name always refers to a complete version (old or
    new); a spare is written in place only once the exchange that made it one is durable
    (:data:`_SETTLED`). One call at a time per process (:data:`_WRITE_LOCK`)."""
    if not items:
        return 0
    with _WRITE_LOCK:
        return _write_locked(items)


def _write_locked(items: Mapping[Path, bytes]) -> int:
    directories = {p.parent for p in items}
    bulk = _SYNCFS is not None and len(items) >= SYNCFS_FROM
    spares: list[Path] = []
    try:
        for directory in directories - _SETTLED:
            _fsync_dir(directory)
            _SETTLED.add(directory)
        for path, data in items.items():
            spare = spare_path(path)
            spares.append(spare)
            _write_spare(spare, data, path.parent, sync=not bulk)
        if bulk:
            _sync_batch([], directories)
        for spare, path in zip(spares, items, strict=True):
            _swap_in(spare, path)
        for directory in directories:
            _fsync_dir(directory)
    except BaseException:
        _SETTLED.difference_update(directories)
        for spare in spares:
            with contextlib.suppress(OSError):
                os.unlink(spare)
        raise
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

    def discard(self, path: Path) -> bool:
        """The file is being deleted: drop its pending write. Returns True if the batch in
        flight writes it: it is deleted (with its spare) once that batch is done, and the
        caller must leave it alone meanwhile (the batch is using its spare)."""
        self._pending.pop(path, None)
        if path in self._in_flight:
            self._unlink_after.add(path)
            return True
        return False

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
        if _WRITE_LOCK.locked():  # a batch whose await was cancelled still writing: the state
            await asyncio.to_thread(_wait_for_writes)  # lock must not go before it is done

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
            if path not in self._unlink_after:  # removed meanwhile: not written again
                self._pending.setdefault(path, data)  # a save made meanwhile is newer: wins
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
                remove(path)
        self._unlink_after.clear()
