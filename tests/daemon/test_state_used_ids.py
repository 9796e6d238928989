"""The used-QKD-key-ID memory is saved when it moved, at most every USED_KEY_IDS_INTERVAL (it is
the whole memory each time), and whatever moved is saved at a clean stop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.daemon import state
from gateway.daemon.state import StateStore, UsedKeyIds, UsedKeyIdsSaver
from tests.daemon.disk import break_syncs

pytestmark = pytest.mark.unit


class Memory:
    def __init__(self) -> None:
        self.generation = 0
        self.ids: list[str] = []
        self.exports = 0

    def use(self, key_id: str) -> None:
        self.ids.append(key_id)
        self.generation += 1

    def export(self) -> UsedKeyIds:
        self.exports += 1
        return {"peer": {"kms": list(self.ids)}}


def _saver(tmp_path: Path) -> tuple[StateStore, Memory, UsedKeyIdsSaver, list[OSError]]:
    store = StateStore(tmp_path)
    store.prepare()
    mem, failures = Memory(), []
    return store, mem, UsedKeyIdsSaver(store, mem.export, lambda: mem.generation,
                                       failures.append), failures


async def test_saved_at_once_then_at_most_once_per_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "USED_KEY_IDS_INTERVAL", 0.2)
    store, mem, saver, _ = _saver(tmp_path)
    mem.use("k1")
    saver.moved()
    assert saver.saves == 1 and store.load_used_key_ids() == {"peer": {"kms": ["k1"]}}
    for i in range(2, 50):  # a burst of activations: one export and one write, later
        mem.use(f"k{i}")
        saver.moved()
    assert saver.saves == 1 and mem.exports == 1
    async with asyncio.timeout(30):
        while saver.saves < 2:
            await asyncio.sleep(0.02)
    assert mem.exports == 2
    assert store.load_used_key_ids()["peer"]["kms"] == [f"k{i}" for i in range(1, 50)]
    saver.moved()  # nothing new: nothing written
    assert saver.saves == 2


async def test_a_stop_saves_what_moved_since_and_cancels_the_timer(tmp_path: Path) -> None:
    store, mem, saver, _ = _saver(tmp_path)
    mem.use("k1")
    saver.moved()
    mem.use("k2")
    saver.moved()  # within the interval: waits for its timer
    assert store.load_used_key_ids()["peer"]["kms"] == ["k1"]
    saver.save()
    assert store.load_used_key_ids()["peer"]["kms"] == ["k1", "k2"] and saver.saves == 2
    saver.save()
    assert saver.saves == 2
    data = json.loads((tmp_path / "used_key_ids.json").read_text())
    assert data == {"peer": {"kms": ["k1", "k2"]}}


async def test_a_refused_save_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, mem, saver, failures = _saver(tmp_path)

    break_syncs(monkeypatch)
    mem.use("k1")
    saver.moved()
    assert len(failures) == 1 and "No space" in str(failures[0]) and saver.saves == 0
    assert store.load_used_key_ids() == {}
