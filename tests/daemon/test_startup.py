"""Batched start-up: keepers started concurrently, their state writes durable before each batch
is handed on (the store's group commit), atomically."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.daemon.startup import start_in_batches
from gateway.daemon.state import StateStore, TunnelState
from tests.daemon.disk import break_syncs

pytestmark = pytest.mark.unit


def _store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state")
    store.prepare()
    return store


async def test_start_in_batches_runs_each_batch_concurrently_and_hands_on_durable_state(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.start()
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
    await start_in_batches(store, names, start, started, lambda e: None, batch=4)
    assert order == names
    assert peak == 4
    # Group commit: never more syncs than saves, and at least one per batch of starts.
    assert 3 <= store.commit.syncs <= store.commit.batches <= 10
    assert store.commit.files_written == 10
    await store.close()


async def test_a_failed_flush_is_reported_and_the_start_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    store.save(TunnelState("t0", 1, 1.0))

    break_syncs(monkeypatch)
    store.start()
    failed: list[OSError] = []
    order: list[str] = []

    async def start(name: str) -> None:
        store.save(TunnelState(name, 2, 1.0, closed=True))

    await start_in_batches(store, ["t0", "t1"], start, order.append, failed.append, batch=2)
    assert order == ["t0", "t1"] and failed and "No space" in str(failed[0])
    t0 = store.load("t0")
    assert t0 is not None and t0.epoch == 1  # old, never partial
    assert os.listdir(tmp_path / "state" / "tunnels") == ["t0.json"]
    monkeypatch.undo()
    await store.close()


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
