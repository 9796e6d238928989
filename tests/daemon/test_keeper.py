"""The keeper against an in-memory installer that records what a data plane would hold."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.clock import BootClock, Clock
from gateway.daemon.keeper import ALARM_CLOSE_FAILED, ALARM_EXPIRED, FailClosedError, TunnelKeeper
from gateway.daemon.state import StateStore
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit


class SlotInstaller:
    """Holds one key slot, like WireGuard's PSK slot; read-back is the slot itself.
    ``broken`` makes every write raise (a dead wireguard-go, a netlink error)."""

    def __init__(self) -> None:
        self.key: Secret | None = None
        self.installs = 0
        self.prepared = False
        self.torn_down: bool | None = None
        self.dropped_sessions = 0
        self.broken = False
        self.block_broken = False
        self.blocked = False

    async def prepare(self) -> None:
        self.prepared = True

    async def install(self, key: Secret, *, drop_session: bool = False) -> None:
        if self.broken:
            raise OSError("data plane unreachable")
        self.key = key
        self.installs += 1
        self.dropped_sessions += drop_session

    async def read_key(self) -> Secret | None:
        return self.key

    async def set_blocked(self, blocked: bool) -> None:
        if self.block_broken:
            raise OSError("netlink refused")
        self.blocked = blocked

    async def close(self, teardown: bool) -> None:
        self.torn_down = teardown


class FakeClock(Clock):
    def __init__(self, boot_id: str = "boot-1") -> None:
        self.t = 1000.0
        self.boot_id = boot_id

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t


def make(tmp_path: Path, clock: Clock, reject_after: float = 0.3,
         inst: SlotInstaller | None = None):
    events: list[tuple[str, dict[str, Any]]] = []
    alarms: list[tuple[str, bool]] = []
    store = StateStore(tmp_path)
    store.prepare()
    inst = inst or SlotInstaller()
    keeper = TunnelKeeper(
        "t1", reject_after, inst, store,
        emit=lambda e, **f: events.append((e, f)),
        alarm=lambda n, a, **f: alarms.append((n, a)),
        clock=clock,
    )
    return keeper, inst, events, alarms, store


async def test_starts_closed_with_a_random_key_and_alarm(tmp_path: Path) -> None:
    keeper, inst, _events, alarms, store = make(tmp_path, FakeClock())
    await keeper.start()
    assert inst.prepared and inst.installs == 1 and inst.key is not None and len(inst.key) == 32
    assert inst.dropped_sessions == 1  # fail closed ends the running session too
    assert keeper.closed
    assert alarms == [(ALARM_EXPIRED, True)]
    st = store.load("t1")
    assert st is not None and st.closed


async def test_activation_installs_saves_and_clears_alarm(tmp_path: Path) -> None:
    clock = FakeClock()
    keeper, inst, _events, alarms, store = make(tmp_path, clock)
    await keeper.start()
    key = Secret(b"k" * 32)
    await keeper.activate(1, key, ("id-1",), "qkd+pqc", "qkd+pqc")
    assert inst.key == key and not keeper.closed and keeper.keys_installed == 1
    assert inst.dropped_sessions == 1  # a rotation keeps the session (only the start dropped)
    assert alarms[-1] == (ALARM_EXPIRED, False)
    saved = store.load("t1")
    assert saved is not None and saved.epoch == 1 and saved.key_ids == ("id-1",)
    assert saved.boot_id == "boot-1" and saved.activated_boot == clock.t and not saved.closed
    raw = json.loads((tmp_path / "tunnels" / "t1.json").read_text())
    assert (b"k" * 32).hex() not in json.dumps(raw) and "a2tr" not in json.dumps(raw)
    with pytest.raises(ValueError):
        await keeper.activate(1, key, (), "qkd+pqc", "qkd+pqc")


async def test_fails_closed_when_deadline_passes(tmp_path: Path) -> None:
    keeper, inst, events, alarms, _ = make(tmp_path, BootClock(), reject_after=0.2)
    await keeper.start()
    good = Secret(b"g" * 32)
    await keeper.activate(1, good, (), "qkd+pqc", "qkd+pqc")
    task = asyncio.create_task(keeper.watch())
    for _ in range(100):
        if keeper.closed:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    assert keeper.closed
    assert inst.key != good
    assert alarms[-1] == (ALARM_EXPIRED, True)
    assert events[-1][0] == "tunnel_failed_closed"


async def test_restart_resumes_only_if_the_data_plane_holds_the_recorded_key(
        tmp_path: Path) -> None:
    clock = FakeClock()
    keeper, inst, *_ = make(tmp_path, clock, reject_after=180)
    await keeper.start()
    await keeper.activate(5, Secret(b"a" * 32), (), "qkd+pqc", "qkd+pqc")
    clock.t += 60
    # Same data plane (the interface survived the restart): resumed, the key left alone.
    keeper2, inst2, events2, alarms2, _ = make(tmp_path, clock, reject_after=180, inst=inst)
    installs = inst.installs
    await keeper2.start()
    assert inst2.installs == installs and not keeper2.closed and keeper2.epoch == 5
    assert events2[0][0] == "tunnel_resumed" and alarms2 == []
    # A recreated interface (empty slot) is never reported as carrying the QKD key.
    keeper3, inst3, events3, alarms3, _ = make(tmp_path, clock, reject_after=180)
    await keeper3.start()
    assert keeper3.closed and inst3.installs == 1 and inst3.key is not None
    assert alarms3 == [(ALARM_EXPIRED, True)]
    assert "data plane does not hold" in events3[-1][1]["reason"]


@pytest.mark.parametrize("change", ["expired", "rebooted", "wall_clock_jump"])
async def test_restart_refuses_expired_or_other_boot_keys(tmp_path: Path, change: str) -> None:
    clock = FakeClock()
    keeper, inst, *_ = make(tmp_path, clock, reject_after=180)
    await keeper.start()
    await keeper.activate(5, Secret(b"a" * 32), (), "qkd+pqc", "qkd+pqc")
    if change == "expired":
        clock.t += 200
    elif change == "rebooted":
        clock.boot_id, clock.t = "boot-2", 10.0
    else:
        # The wall clock stepping back a day changes nothing: lifetimes are on the boot clock.
        clock.t += 10
    keeper2, inst2, *_ = make(tmp_path, clock, reject_after=180, inst=inst)
    before = inst.installs
    await keeper2.start()
    assert keeper2.closed == (change != "wall_clock_jump")
    assert (inst2.installs > before) == (change != "wall_clock_jump")


async def test_failed_activation_puts_the_previous_key_back(tmp_path: Path) -> None:
    clock = FakeClock()
    keeper, inst, events, _alarms, store = make(tmp_path, clock, reject_after=180)
    await keeper.start()
    k1 = Secret(b"1" * 32)
    await keeper.activate(1, k1, (), "qkd+pqc", "qkd+pqc")

    # The write of epoch 2 fails half-way (the slot now holds garbage), then writes work again.
    orig = inst.install
    calls = 0

    async def flaky(key: Secret, *, drop_session: bool = False) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            inst.key = Secret(b"?" * 32)
            raise OSError("read-back mismatch")
        await orig(key, drop_session=drop_session)

    inst.install = flaky  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await keeper.activate(2, Secret(b"2" * 32), (), "qkd+pqc", "qkd+pqc")
    assert inst.key == k1 and keeper.epoch == 1 and not keeper.closed
    assert store.load("t1").epoch == 1  # type: ignore[union-attr]
    assert any(e == "tunnel_install_failed" for e, _ in events)


async def test_fail_closed_escalates_to_interface_down_then_retries(tmp_path: Path) -> None:
    clock = FakeClock()
    keeper, inst, events, alarms, _ = make(tmp_path, clock, reject_after=180)
    await keeper.start()
    await keeper.activate(1, Secret(b"1" * 32), (), "qkd+pqc", "qkd+pqc")
    inst.broken = True
    await keeper.expire("test")
    # The random key could not be written: the interface went down instead.
    assert keeper.closed and inst.blocked
    assert alarms[-1] == (ALARM_EXPIRED, True)
    # Now nothing works at all: the keeper keeps the failure visible and retries.
    inst.broken = False
    await keeper.activate(2, Secret(b"2" * 32), (), "qkd+pqc", "qkd+pqc")
    assert not inst.blocked and not keeper.closed  # a new key lifts the block
    inst.broken = inst.block_broken = True
    await keeper.expire("test again")
    assert keeper.closed and (ALARM_CLOSE_FAILED, True) in alarms
    task = asyncio.create_task(keeper.watch())
    inst.broken = False  # the data plane comes back: the retry closes it for real
    for _ in range(60):
        if not keeper._close_pending:  # the retry's own state
            break
        await asyncio.sleep(0.05)
    task.cancel()
    assert inst.key is not None and inst.key != Secret(b"2" * 32)
    assert alarms[-1] == (ALARM_EXPIRED, True) and (ALARM_CLOSE_FAILED, False) in alarms
    assert any(e == "tunnel_fail_closed_error" for e, _ in events)


async def test_verify_restores_a_key_the_data_plane_lost(tmp_path: Path) -> None:
    clock = FakeClock()
    keeper, inst, events, _alarms, _ = make(tmp_path, clock, reject_after=180)
    await keeper.start()
    key = Secret(b"v" * 32)
    await keeper.activate(1, key, (), "qkd+pqc", "qkd+pqc")
    assert not await keeper.verify()
    inst.key = None  # the peer was re-added by reconciliation: empty slot
    assert await keeper.verify()
    assert inst.key == key and not keeper.closed
    # While failed closed, a lost slot gets a random key again, never the expired one.
    await keeper.expire("test")
    inst.key = None
    assert await keeper.verify()
    assert inst.key is not None and inst.key != key and keeper.closed
    assert [e for e, _ in events].count("tunnel_key_drift") == 2


async def test_verify_trusts_a_matching_read_of_the_whole_interface(tmp_path: Path) -> None:
    clock = FakeClock()
    keeper, inst, events, _alarms, _ = make(tmp_path, clock, reject_after=180)
    reads = 0
    read_slot = inst.read_key

    async def counted() -> Secret | None:
        nonlocal reads
        reads += 1
        return await read_slot()

    inst.read_key = counted  # type: ignore[method-assign]
    await keeper.start()
    key, new = Secret(b"v" * 32), Secret(b"w" * 32)
    await keeper.activate(1, key, (), "qkd+pqc", "qkd+pqc")
    before = reads
    assert not await keeper.verify(key)  # the interface's read found this key: settled
    assert reads == before
    # A read from before the next activation is stale: the keeper reads the slot itself.
    await keeper.activate(2, new, (), "qkd+pqc", "qkd+pqc")
    assert not await keeper.verify(key)
    assert reads == before + 1 and inst.key == new
    # A drift seen in the interface's read: read again, then restored.
    inst.key = None
    assert await keeper.verify(None)
    assert reads == before + 2 and inst.key == new
    assert [e for e, _ in events].count("tunnel_key_drift") == 1


async def test_failsafe_closes_expiring_keys_only_and_is_idempotent(tmp_path: Path) -> None:
    clock = FakeClock()
    keeper, inst, *_ = make(tmp_path, clock, reject_after=60)
    await keeper.start()
    key = Secret(b"f" * 32)
    await keeper.activate(3, key, (), "qkd+pqc", "qkd+pqc")
    fs, _, _events, _alarms, store = make(tmp_path, clock, reject_after=60, inst=inst)
    clock.t += 30  # 30 s left: more than the horizon
    assert await fs.failsafe(horizon=15) is None and inst.key == key
    clock.t += 20  # 10 s left: within the horizon, closed before reject_after
    assert await fs.failsafe(horizon=15) is not None
    assert inst.key != key and inst.dropped_sessions == 2
    assert store.load("t1").closed  # type: ignore[union-attr]
    installs = inst.installs
    fs2, *_ = make(tmp_path, clock, reject_after=60, inst=inst)
    assert await fs2.failsafe(horizon=15) is None and inst.installs == installs
    inst.broken = inst.block_broken = True
    fs3, *_ = make(tmp_path / "other", clock, reject_after=60, inst=inst)
    with pytest.raises(FailClosedError):
        await fs3.failsafe(horizon=15)


async def test_an_unreadable_state_file_never_keeps_a_tunnel_open(tmp_path: Path) -> None:
    clock = FakeClock()
    keeper, inst, *_ = make(tmp_path, clock, reject_after=180)
    await keeper.start()
    await keeper.activate(1, Secret(b"1" * 32), (), "qkd+pqc", "qkd+pqc")
    (tmp_path / "tunnels" / "t1.json").write_text("null")
    # Neither the failsafe nor a restarting daemon stops at the broken file: both close.
    fs, _, events, *_ = make(tmp_path, clock, reject_after=180, inst=inst)
    assert await fs.failsafe(horizon=15) == "no state recorded"
    assert inst.key != Secret(b"1" * 32)
    assert events[0][0] == "tunnel_state_unreadable"
    (tmp_path / "tunnels" / "t1.json").write_text("[]")
    k2, _, events2, *_ = make(tmp_path, clock, reject_after=180, inst=inst)
    await k2.start()
    assert k2.closed and events2[0][0] == "tunnel_state_unreadable"


async def test_failsafe_marks_closed_only_once_the_old_key_is_gone(tmp_path: Path) -> None:
    # Found by the systemd tier: with the PSK write failing, taking the link down used to count
    # as done, so later ticks skipped the tunnel with the old key still in the slot.
    clock = FakeClock()
    keeper, inst, *_ = make(tmp_path, clock, reject_after=60)
    await keeper.start()
    old = Secret(b"o" * 32)
    await keeper.activate(1, old, (), "qkd+pqc", "qkd+pqc")
    clock.t += 55
    inst.broken = True
    fs, *_ = make(tmp_path, clock, reject_after=60, inst=inst)
    with pytest.raises(FailClosedError):
        await fs.failsafe(horizon=15)
    assert inst.blocked and inst.key == old  # traffic stopped, but not done
    assert not StateStore(tmp_path).load("t1").closed  # type: ignore[union-attr]
    inst.broken = False  # the next tick writes the key and only then records "closed"
    fs2, *_ = make(tmp_path, clock, reject_after=60, inst=inst)
    assert await fs2.failsafe(horizon=15) is not None
    assert inst.key != old and StateStore(tmp_path).load("t1").closed  # type: ignore[union-attr]


async def test_concurrent_fail_closed_paths_write_once(tmp_path: Path) -> None:
    # The core's Expire and the keeper's own deadline fire together: their writes must not
    # interleave (one's read-back saw the other's key: "PSK read back differs").
    clock = FakeClock()

    class Slow(SlotInstaller):
        active = 0

        async def install(self, key: Secret, *, drop_session: bool = False) -> None:
            Slow.active += 1
            assert Slow.active == 1, "two writes at once"
            await asyncio.sleep(0.01)
            await super().install(key, drop_session=drop_session)
            assert self.key == key  # the read-back
            Slow.active -= 1

    keeper, inst, events, *_ = make(tmp_path, clock, reject_after=180, inst=Slow())
    await keeper.start()
    await keeper.activate(1, Secret(b"1" * 32), (), "qkd+pqc", "qkd+pqc")
    installs = inst.installs
    await asyncio.gather(keeper.expire("protocol Expire"), keeper.expire("deadline"))
    assert keeper.closed and inst.installs == installs + 1
    assert [e for e, _ in events].count("tunnel_failed_closed") == 2  # start, then once


async def test_watch_ends_when_cancelled_as_a_change_arrives(tmp_path: Path) -> None:
    """A SIGTERM must end the daemon's TaskGroup even when it coincides with an activation:
    asyncio.wait_for on Python 3.11 lost such a cancellation and the watch loop ran on."""
    keeper, _inst, _ev, _al, _store = make(tmp_path, FakeClock(), reject_after=3600.0)
    await keeper.start()
    await keeper.activate(1, Secret(b"k" * 32), (), "qkd+pqc", "qkd+pqc")
    for _ in range(50):
        task = asyncio.create_task(keeper.watch())
        for _ in range(3):
            await asyncio.sleep(0)  # parked in its wait for a change
        keeper._deadline -= 1  # the change (an earlier time: a wake-up) and the cancel together
        keeper._rearm()
        assert keeper._deadlines is not None and keeper._deadlines._wake.is_set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done, "the watch loop survived its cancellation"
        assert task.cancelled()
