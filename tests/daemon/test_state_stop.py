"""A daemon's clean stop (SIGTERM) writes every state save still waiting in the store's group
commit before it releases the state directory's lock, and reports a last write that fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.daemon.app import Daemon
from gateway.daemon.state import TunnelState
from tests.config.sitefiles import copy_examples
from tests.daemon.disk import break_syncs

pytestmark = pytest.mark.unit


def _daemon(tmp_path: Path) -> tuple[Daemon, list[tuple[str, dict[str, Any]]]]:
    cfg = load_config(copy_examples(tmp_path) / "pair" / "bucharest.yaml")
    cfg = cfg.model_copy(update={"state_dir": tmp_path / "state"})  # not the example's /var/lib
    d = Daemon(cfg)
    assert d.store.root == tmp_path / "state"
    events: list[tuple[str, dict[str, Any]]] = []
    real_emit = d.bus.emit

    def emit(event: str, level: Any = "info", **fields: Any) -> None:
        events.append((event, fields))
        real_emit(event, level, **fields)

    d.bus.emit = emit  # type: ignore[method-assign]
    for name, keeper in d.keepers.items():
        async def close(teardown: bool, name: str = name) -> None:
            # No data plane here: the keeper's last act at a stop is a save, like a fail-closed.
            d.store.save(TunnelState(name, 9, 1.0, closed=True))
        keeper.close = close  # type: ignore[method-assign]
    d.store.prepare()
    assert d.lock.try_acquire()
    d.store.start(d._state_saved)
    return d, events


async def test_a_clean_stop_writes_every_pending_save_before_the_lock_goes(
        tmp_path: Path) -> None:
    d, events = _daemon(tmp_path)
    names = sorted(d.keepers)
    await d._shutdown()
    assert not d.store.commit.running and d.store.commit.pending == 0
    for name in names:
        st = d.store.load(name)
        assert st is not None and st.epoch == 9 and st.closed
    assert [e for e, _ in events][-1] == "daemon_stopped"
    assert "state_save_failed" not in [e for e, _ in events]
    assert d.lock.try_acquire()  # released after the last write
    d.lock.release()


async def test_a_last_write_that_fails_at_the_stop_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d, events = _daemon(tmp_path)

    break_syncs(monkeypatch)
    await d._shutdown()
    failed = [f for e, f in events if e == "state_save_failed"]
    assert failed and "No space left on device" in failed[-1]["error"]
    assert failed[-1]["what"] == "state_dir" and failed[-1]["pending"] == len(d.keepers)
    assert all(d.store.load(name) is None for name in d.keepers)  # nothing half-written
    assert [e for e, _ in events][-1] == "daemon_stopped"
    d.lock.release()
