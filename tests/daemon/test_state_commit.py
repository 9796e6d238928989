"""Group commit of the state directory (gateway.daemon.commit): while the committer runs, a save
returns at once and the files are written in batches, one sync each, in a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from gateway.daemon import commit
from gateway.daemon.state import StateLock, StateStore, TunnelState
from tests.daemon.disk import break_syncs

pytestmark = pytest.mark.unit

#: Generous bound for conditions on a loaded 2-core machine (never a "long enough" sleep).
WAIT = 30.0


def _store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state")
    store.prepare()
    return store


def _files(tmp_path: Path) -> list[str]:
    return sorted(os.listdir(tmp_path / "state" / "tunnels"))


async def _until(cond: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not cond():
            await asyncio.sleep(0.01)
    assert cond(), what


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on every os.fsync is recorded, in order, as "dir" or "file"."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


class Gate:
    """Wraps write_durably: records each batch, and can hold a batch in the worker thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail: OSError | None = None
        real = commit.write_durably

        def gated(items: Mapping[Path, bytes]) -> int:
            self.batches.append(sorted(p.stem for p in items))
            self.entered.set()
            assert self.release.wait(WAIT)
            if self.fail is not None:
                raise self.fail
            return real(items)

        monkeypatch.setattr(commit, "write_durably", gated)


async def _batch_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Gate, StateStore]:
    """A running store whose first batch (``a``, epoch 1) is held in the worker thread."""
    gate = Gate(monkeypatch)
    gate.release.clear()
    store = _store(tmp_path)
    store.start()
    store.save(TunnelState("a", 1, 1.0))
    await _until(gate.entered.is_set, "a batch in flight")
    return gate, store


async def test_a_save_returns_before_any_sync_and_the_committer_writes_it(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.start()
    store.save(TunnelState("a", 1, 1.0))
    # Nothing written on the caller's path: no sync, no file, only noted.
    assert (store.commit.saves, store.commit.syncs, store.commit.batches) == (1, 0, 0)
    assert store.commit.pending == 1 and _files(tmp_path) == []
    await _until(lambda: store.commit.batches == 1, "the committer wrote the batch")
    st = store.load("a")
    assert st is not None and st.epoch == 1 and store.commit.syncs == 1
    await store.close()
    assert _files(tmp_path) == ["a.json"]
    assert (tmp_path / "state" / "tunnels" / "a.json").stat().st_mode & 0o777 == 0o600


async def test_the_last_save_of_a_file_wins_and_a_batch_syncs_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.start()
    store.save(TunnelState("a", 1, 1.0))
    store.save(TunnelState("b", 1, 1.0))
    store.save(TunnelState("a", 2, 2.0))  # same loop iteration: replaces epoch 1
    await store.flush()
    a = store.load("a")
    assert a is not None and a.epoch == 2
    assert (store.commit.batches, store.commit.syncs, store.commit.files_written) == (1, 1, 2)
    await store.close()


async def test_saves_within_the_linger_share_one_batch_and_close_cuts_it_short(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A trickle of activations (83/s at 10,000 tunnels) shares thread hand-offs and syncs: the
    # committer, once woken, waits LINGER before it takes the batch. (Both sleeps run on this
    # loop, so the later saves always land before the linger ends, however loaded the machine.)
    gate = Gate(monkeypatch)
    monkeypatch.setattr(commit, "LINGER", 0.5)
    store = _store(tmp_path)
    store.start()
    store.save(TunnelState("a", 1, 1.0))
    await asyncio.sleep(0.05)
    store.save(TunnelState("b", 1, 1.0))
    store.save(TunnelState("c", 1, 1.0))
    await _until(lambda: store.commit.batches == 1, "the committer wrote the batch")
    assert gate.batches == [["a", "b", "c"]]
    # close() during a linger does not wait it out (here an hour), and loses nothing.
    monkeypatch.setattr(commit, "LINGER", 3600.0)
    store.save(TunnelState("d", 1, 1.0))
    await asyncio.sleep(0)
    async with asyncio.timeout(WAIT):
        await store.close()
    assert gate.batches == [["a", "b", "c"], ["d"]] and _files(tmp_path)[-1] == "d.json"


async def test_a_save_during_a_batch_in_flight_lands_in_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, store = await _batch_held(tmp_path, monkeypatch)
    store.save(TunnelState("a", 2, 2.0))
    store.save(TunnelState("b", 1, 1.0))
    assert store.commit.pending == 2 and store.commit.batches == 0
    gate.release.set()
    await store.flush()
    assert gate.batches == [["a"], ["a", "b"]]
    a = store.load("a")
    assert a is not None and a.epoch == 2 and store.commit.batches == 2
    await store.close()


async def test_close_writes_everything_pending_then_saves_are_synchronous(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, store = await _batch_held(tmp_path, monkeypatch)
    for i in range(20):
        store.save(TunnelState(f"t{i}", i, 1.0))
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    gate.release.set()
    await closing
    assert not store.commit.running and store.commit.pending == 0
    assert _files(tmp_path) == sorted(["a.json"] + [f"t{i}.json" for i in range(20)])
    batches = store.commit.batches
    store.save(TunnelState("late", 1, 1.0))  # no committer: written before save returns
    assert store.commit.batches == batches + 1 and "late.json" in _files(tmp_path)


async def test_a_failed_batch_is_reported_saves_refused_until_a_retry_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit, "RETRY_INTERVAL", 0.05)
    gate = Gate(monkeypatch)
    reports: list[OSError | None] = []
    store = _store(tmp_path)
    store.save(TunnelState("a", 1, 1.0))
    store.start(reports.append)
    gate.fail = OSError(28, "No space left on device")
    store.save(TunnelState("a", 2, 2.0))
    await _until(lambda: bool(reports), "the failure reported")
    assert isinstance(reports[0], OSError) and reports[0].errno == 28
    # As a synchronous write did: the caller hears the error (an activation then fails).
    with pytest.raises(OSError, match="No space left on device"):
        store.save(TunnelState("b", 1, 1.0))
    a = store.load("a")
    assert a is not None and a.epoch == 1 and _files(tmp_path) == ["a.json"]
    gate.fail = None
    await _until(lambda: reports[-1] is None, "the recovery reported")
    a = store.load("a")
    assert a is not None and a.epoch == 2  # the failed batch was retried
    store.save(TunnelState("b", 1, 1.0))
    await store.close()
    assert _files(tmp_path) == [".spare-a.json", "a.json", "b.json"]
    assert store.commit.failures >= 1 and reports.count(None) == 1


async def test_a_failed_flush_raises_leaves_old_files_and_no_temporary_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    store.save(TunnelState("a", 1, 1.0))

    break_syncs(monkeypatch, 30, "Read-only file system")
    store.start()
    store.save(TunnelState("a", 2, 2.0))
    store.save(TunnelState("b", 2, 2.0))
    with pytest.raises(OSError, match="Read-only"):
        await store.flush()
    a = store.load("a")
    assert a is not None and a.epoch == 1 and _files(tmp_path) == ["a.json"]
    monkeypatch.undo()
    await store.close()  # the files that failed are still pending: written at the stop
    a = store.load("a")
    assert a is not None and a.epoch == 2
    assert _files(tmp_path) == [".spare-a.json", "a.json", "b.json"]


def test_without_the_committer_a_failed_write_raises_and_is_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    with monkeypatch.context() as m:
        break_syncs(m)
        with pytest.raises(OSError, match="No space"):
            store.save(TunnelState("a", 1, 1.0))
    assert _files(tmp_path) == [] and store.commit.pending == 0
    store.save(TunnelState("b", 1, 1.0))
    assert _files(tmp_path) == ["b.json"]


async def test_remove_drops_a_pending_save_and_one_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(monkeypatch)
    store = _store(tmp_path)
    store.start()
    store.save(TunnelState("gone", 1, 1.0))
    store.remove("gone")  # still pending: never written
    await store.flush()
    assert _files(tmp_path) == [] and gate.batches == []
    gate.release.clear()
    store.save(TunnelState("late", 1, 1.0))
    await _until(gate.entered.is_set, "a batch in flight")
    store.remove("late")  # being written: deleted again once the batch is done
    gate.release.set()
    await store.flush()
    assert _files(tmp_path) == [] and gate.batches == [["late"]]
    await store.close()


def test_write_durably_swaps_each_file_in_and_keeps_the_old_version_as_its_spare(
        tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b"old")
    assert commit.write_durably({tmp_path / "a.json": b"new", tmp_path / "b.json": b"b"}) == 1
    # a had a version: it is now a's spare; b had none: its spare took the name.
    assert sorted(os.listdir(tmp_path)) == [".spare-a.json", "a.json", "b.json"]
    assert (tmp_path / "a.json").read_bytes() == b"new"
    assert (tmp_path / ".spare-a.json").read_bytes() == b"old"
    # The spare is written in place: a shorter version is cut to its length.
    commit.write_durably({tmp_path / "a.json": b"x" * 100})
    commit.write_durably({tmp_path / "a.json": b"y"})
    assert (tmp_path / "a.json").read_bytes() == b"y"
    assert (tmp_path / ".spare-a.json").read_bytes() == b"x" * 100
    assert commit.write_durably({}) == 0


@pytest.mark.parametrize("renameat2", ["missing", "einval"])
def test_without_rename_exchange_a_plain_rename_replaces_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: str) -> None:
    """A libc without renameat2, or a file system that refuses RENAME_EXCHANGE (EINVAL):
    each save renames its spare over the file, as before (no spare is left)."""
    def refuse(*args: object) -> int:
        return -1

    monkeypatch.setattr(commit, "_RENAMEAT2", None if renameat2 == "missing" else refuse)
    (tmp_path / "a.json").write_bytes(b"old")
    commit.write_durably({tmp_path / "a.json": b"new"})
    assert os.listdir(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_bytes() == b"new"


def test_a_big_batch_takes_one_syncfs_a_small_one_an_fsync_per_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if commit._SYNCFS is None:
        pytest.skip("this libc has no syncfs")
    calls: list[str] = []
    real_syncfs, real_fsync = commit._SYNCFS, os.fsync

    def syncfs(fd: int) -> int:
        calls.append("syncfs")
        return real_syncfs(fd)

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(commit, "_SYNCFS", syncfs)
    monkeypatch.setattr(os, "fsync", fsync)
    commit.write_durably({tmp_path / f"{i}.json": b"x" for i in range(3)})
    # The directory (first batch there in this process), each file, the directory.
    assert calls == ["fsync"] + ["fsync"] * 3 + ["fsync"]
    calls.clear()
    commit.write_durably({tmp_path / f"{i}.json": b"y" for i in range(commit.SYNCFS_FROM)})
    assert calls == ["syncfs", "fsync"]  # the whole batch, then the directory
    calls.clear()
    (tmp_path / "sub").mkdir()  # two directories of one file system: still one syncfs
    batch = {tmp_path / f"{i}.json": b"z" for i in range(commit.SYNCFS_FROM)}
    commit.write_durably({**batch, tmp_path / "sub" / "a.json": b"z"})
    assert calls.count("syncfs") == 1


def test_after_a_failed_batch_spares_are_removed_and_the_next_batch_syncs_the_directory_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spare is written in place only once the swap that made it one is durable: after a
    failure (the swaps' directory fsync may not have happened) the batch's spares are deleted
    and the next batch in that directory starts with a directory fsync."""
    commit.write_durably({tmp_path / "a.json": b"1"})
    commit.write_durably({tmp_path / "a.json": b"2"})  # a.json and its spare: 1
    with monkeypatch.context() as m:
        break_syncs(m)
        with pytest.raises(OSError, match="No space"):
            commit.write_durably({tmp_path / "a.json": b"3"})
    assert os.listdir(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_bytes() == b"2"
    synced = _record_fsyncs(monkeypatch)
    commit.write_durably({tmp_path / "a.json": b"4"})
    assert synced == ["dir", "file", "dir"]  # the directory first
    assert (tmp_path / "a.json").read_bytes() == b"4"


async def test_a_file_removed_while_its_batch_is_written_fails_nothing_and_is_gone_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tunnel removed (a reload) while the batch writing its file is between its sync and
    its swap: the batch uses the file's spare, so the file is deleted once the batch is done,
    not under it (which failed the whole batch and refused every tunnel's saves)."""
    store = _store(tmp_path)
    store.save(TunnelState("x", 1, 1.0))
    store.save(TunnelState("x", 2, 1.0))  # x and its spare exist
    entered, release = threading.Event(), threading.Event()
    real = commit._swap_in

    def held(spare: Path, path: Path) -> None:
        if path.stem == "x" and not entered.is_set():
            entered.set()
            assert release.wait(WAIT)
        real(spare, path)

    monkeypatch.setattr(commit, "_swap_in", held)
    reports: list[OSError | None] = []
    store.start(reports.append)
    store.save(TunnelState("x", 3, 1.0))
    store.save(TunnelState("y", 1, 1.0))
    await _until(entered.is_set, "x's batch between its sync and its swap")
    store.remove("x")
    release.set()
    await store.flush()
    store.save(TunnelState("y", 2, 1.0))  # not refused
    await store.close()
    assert reports == [] and store.commit.failures == 0
    assert _files(tmp_path) == [".spare-y.json", "y.json"]
    y = store.load("y")
    assert y is not None and y.epoch == 2


def test_two_writes_of_one_file_take_turns(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two write_durably calls at once (a batch whose await was cancelled still runs in its
    thread while the next starts) would write the same spare: the second waits."""
    path = tmp_path / "a.json"
    commit.write_durably({path: b"v1"})
    commit.write_durably({path: b"v2"})
    entered, release = threading.Event(), threading.Event()
    calls: list[bytes] = []
    real = commit._write_spare

    def held(spare: Path, data: bytes, directory: Path, sync: bool) -> None:
        calls.append(data)
        if data == b"v3":
            entered.set()
            assert release.wait(WAIT)
        real(spare, data, directory, sync)

    monkeypatch.setattr(commit, "_write_spare", held)
    first = threading.Thread(target=commit.write_durably, args=({path: b"v3"},))
    first.start()
    assert entered.wait(WAIT)
    second = threading.Thread(target=commit.write_durably, args=({path: b"v4"},))
    second.start()
    second.join(0.3)
    assert calls == [b"v3"]  # the second write has not touched the spare
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert calls == [b"v3", b"v4"]
    assert path.read_bytes() == b"v4" and commit.spare_path(path).read_bytes() == b"v3"


async def test_close_waits_for_a_batch_whose_await_was_cancelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush cancelled while its batch is in the worker thread (a TaskGroup sibling failed
    during start-up): the thread goes on, and close() (after which the daemon releases the
    state lock, and `qkd-gateway failsafe` may write) returns only once it is done."""
    monkeypatch.setattr(commit, "LINGER", 30.0)  # the committer task stays out of the way
    entered, release = threading.Event(), threading.Event()
    real = commit._write_spare

    def held(spare: Path, data: bytes, directory: Path, sync: bool) -> None:
        entered.set()
        assert release.wait(WAIT)
        real(spare, data, directory, sync)

    monkeypatch.setattr(commit, "_write_spare", held)
    store = _store(tmp_path)
    store.start()
    store.save(TunnelState("a", 1, 1.0))
    flush = asyncio.create_task(store.flush())
    await _until(entered.is_set, "the batch in the worker thread")
    flush.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flush
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.3)
    assert not closing.done()  # the cancelled batch is still writing
    release.set()
    await asyncio.wait_for(closing, WAIT)
    a = store.load("a")
    assert a is not None and a.epoch == 1


def test_taking_the_state_lock_makes_the_next_batch_sync_the_directory_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process may have swapped names here without its directory fsync (killed):
    once this one takes the lock, its first batch fsyncs the directory before it writes."""
    commit.write_durably({tmp_path / "a.json": b"1"})  # the directory is settled
    lock = StateLock(tmp_path)
    assert lock.try_acquire()
    try:
        synced = _record_fsyncs(monkeypatch)
        commit.write_durably({tmp_path / "a.json": b"2"})
        assert synced == ["dir", "file", "dir"]  # the directory first
    finally:
        lock.release()
