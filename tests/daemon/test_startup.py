"""Batched start-up: state writes collected and made durable once per batch, atomically."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.daemon import startup
from gateway.daemon.startup import SaveBatch, start_in_batches
from gateway.daemon.state import StateStore, TunnelState

pytestmark = pytest.mark.unit


def _store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state")
    store.prepare()
    return store


def test_writes_wait_for_the_flush_then_land_whole(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save(TunnelState("a", 1, 1.0))
    with SaveBatch(store) as batch:
        store.save(TunnelState("a", 2, 2.0, closed=True))
        store.save(TunnelState("b", 0, 2.0, closed=True))
        store.save(TunnelState("b", 0, 3.0, closed=True))  # the last write to a file wins
        old = store.load("a")
        assert old is not None and old.epoch == 1 and store.load("b") is None
        batch.flush()
        a, b = store.load("a"), store.load("b")
        assert a is not None and a.epoch == 2 and a.closed
        assert b is not None and b.activated_at == 3.0
        assert (batch.files_written, batch.syncs) == (2, 1)
        store.save(TunnelState("a", 3, 4.0))  # after a flush, still collected, then written
        again = store.load("a")
        assert again is not None and again.epoch == 2
    a = store.load("a")
    assert a is not None and a.epoch == 3 and batch.syncs == 2
    # Closed: writes go straight to disk again.
    store.save(TunnelState("c", 5, 1.0))
    c = store.load("c")
    assert c is not None and c.epoch == 5
    names = sorted(os.listdir(tmp_path / "state" / "tunnels"))
    assert names == ["a.json", "b.json", "c.json"]  # no temporary file left
    assert all((tmp_path / "state" / "tunnels" / n).stat().st_mode & 0o777 == 0o600
               for n in names)


def test_a_failed_flush_leaves_old_files_and_no_temporary_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    store.save(TunnelState("a", 1, 1.0))

    def broken(paths: list[str], directory: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(startup, "_sync_files", broken)
    batch = SaveBatch(store)
    with pytest.raises(OSError), batch:
        store.save(TunnelState("a", 2, 2.0))
        batch.flush()
    a = store.load("a")
    assert a is not None and a.epoch == 1
    assert os.listdir(tmp_path / "state" / "tunnels") == ["a.json"]


def test_start_in_batches_runs_each_batch_concurrently_and_syncs_once_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    syncs: list[int] = []
    real = startup._sync_files
    monkeypatch.setattr(startup, "_sync_files",
                        lambda paths, d: (syncs.append(len(paths)), real(paths, d)))
    running = 0
    peak = 0
    order: list[str] = []

    async def start(name: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        store.save(TunnelState(name, 0, 1.0, closed=True))
        running -= 1

    def started(name: str) -> None:
        # Its state is already durable when a tunnel is handed on.
        st = store.load(name)
        assert st is not None and st.closed
        order.append(name)

    names = [f"t{i}" for i in range(10)]
    asyncio.run(start_in_batches(store, names, start, started, lambda e: None, batch=4))
    assert order == names
    assert peak == 4
    assert syncs == [4, 4, 2]


async def test_a_hub_interface_is_applied_once_when_its_tunnels_start_together() -> None:
    """Concurrent starts of a hub's tunnels: one apply (one wireguard-go), not one per tunnel
    (the second wireguard-go for the same name failed with "TUN busy" and the daemon exited)."""
    from gateway.daemon.wg_installer import WgInterface
    from gateway.dataplane.types import WgInterfaceSpec

    class SlowBackend:
        def __init__(self) -> None:
            self.applies = 0
            self.running = 0
            self.most = 0

        async def apply(self, spec: WgInterfaceSpec) -> list[str]:
            self.applies += 1
            self.running += 1
            self.most = max(self.most, self.running)
            await asyncio.sleep(0.01)
            self.running -= 1
            return []

    backend = SlowBackend()
    iface = WgInterface(backend, WgInterfaceSpec("wg-hub", None))  # type: ignore[arg-type]
    await asyncio.gather(*(iface.ensure() for _ in range(3)), iface.reconcile())
    assert backend.most == 1
    assert backend.applies == 2  # the ensure once, the reconcile once
