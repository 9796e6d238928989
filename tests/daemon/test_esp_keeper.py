"""The ESP keeper's logic against an in-memory ESP data plane (tests/daemon/esp_sim.py), and the
action runner driving it: the make-before-break order, resume only on matching SAs, fail closed
(SAs gone, policies kept), kernel expiries, drift repaired by new keys (never a re-installed
key), and no key byte in any event. The real kernel: tests/vm/test_daemon_xfrm.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.actions import ActionRunner
from gateway.daemon.clock import BootClock
from gateway.daemon.esp_events import dispatch
from gateway.daemon.esp_keeper import EspKeeper
from gateway.daemon.lifetime import ALARM_CLOSE_FAILED, ALARM_EXPIRED
from gateway.daemon.state import StateStore
from gateway.dataplane.xfrm import SaAcquire, XfrmEventsLost
from gateway.keymaterial import Secret
from gateway.protocol import (
    Activate,
    AllocateSpi,
    Expire,
    Installed,
    InstallFailed,
    InstallKeys,
    Retire,
    SpiAllocated,
    TunnelKeys,
)
from gateway.telemetry import TelemetryBus
from tests.daemon.esp_sim import LOCAL, REMOTE, EspSim
from tests.daemon.test_keeper import FakeClock

pytestmark = pytest.mark.unit


class Rig:
    def __init__(self, tmp_path: Path, clock: FakeClock | None = None,
                 sim: EspSim | None = None, reject_after: float = 180.0) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.alarms: list[tuple[str, bool]] = []
        self.rekeys: list[str] = []
        self.keys: list[Secret] = []
        self.clock = clock or FakeClock()
        self.store = StateStore(tmp_path)
        self.store.prepare()
        self.sim = sim or EspSim()
        self.keeper = EspKeeper(
            "t1", reject_after, self.sim, self.store,
            emit=lambda e, **f: self.events.append((e, f)),
            alarm=lambda n, a, **f: self.alarms.append((n, a)),
            clock=self.clock, rekey=lambda name, why: self.rekeys.append(why))

    def tunnel_keys(self, spi_in: int, spi_out: int) -> TunnelKeys:
        esp_in, esp_out = Secret.random(36), Secret.random(36)
        self.keys += [esp_in, esp_out]
        return TunnelKeys("qkd+pqc", ("qkd", "pqc"), ("id",), Secret.random(32), esp_in,
                          esp_out, spi_in, spi_out)

    async def rollover(self, epoch: int, peer_spi: int) -> TunnelKeys:
        """One epoch in the protocol's order: AllocateSpi, InstallKeys, Activate."""
        spi = await self.keeper.allocate_spi(epoch)
        keys = self.tunnel_keys(spi, peer_spi)
        await self.keeper.install_inbound(epoch, keys)
        await self.keeper.activate_keys(epoch, keys)
        return keys

    def assert_no_key_in_events(self) -> None:
        text = json.dumps([e for e in self.events], default=repr) + repr(self.alarms)
        for key in self.keys:
            assert key.reveal().hex() not in text


async def test_rollovers_follow_make_before_break_and_record_spis(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.keeper.start()
    assert rig.keeper.closed and rig.sim.policies == 3  # no state: closed, policies in place
    k1 = await rig.rollover(1, peer_spi=0x9001)
    assert not rig.keeper.closed and rig.alarms[-1] == (ALARM_EXPIRED, False)
    assert rig.sim.outbound == {0x9001: k1.esp_out} and rig.sim.inbound[k1.spi_in] == k1.esp_in
    k2 = await rig.rollover(2, peer_spi=0x9002)
    # The new outbound SA replaced the old one at once; both inbound SAs exist until Retire.
    assert rig.sim.outbound == {0x9002: k2.esp_out}
    assert set(rig.sim.inbound) == {k1.spi_in, k2.spi_in}
    await rig.keeper.retire(1)
    assert set(rig.sim.inbound) == {k2.spi_in}
    st = rig.store.load("t1")
    assert st is not None and (st.epoch, st.spi_in, st.spi_out) == (2, k2.spi_in, 0x9002)
    status = rig.keeper.status()
    assert status["esp"] == {"key_in_use_epoch": 2, "spi_in": f"0x{k2.spi_in:08x}",
                             "spi_out": "0x00009002"}
    assert rig.keeper.keys_installed == 2
    raw = (tmp_path / "tunnels" / "t1.json").read_text()
    for key in rig.keys:
        assert key.reveal().hex() not in raw
    rig.assert_no_key_in_events()
    with pytest.raises(ValueError):
        await rig.keeper.activate_keys(2, k2)


async def test_an_abandoned_exchange_gives_its_spi_back(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.keeper.start()
    await rig.rollover(1, 0x9001)
    spi = await rig.keeper.allocate_spi(2)
    assert rig.sim.inbound[spi] is None  # larval
    await rig.keeper.retire(2)
    assert spi not in rig.sim.inbound and not rig.keeper.closed


async def test_restart_resumes_only_when_the_kernel_holds_the_recorded_sas(
        tmp_path: Path) -> None:
    clock = FakeClock()
    first = Rig(tmp_path, clock)
    await first.keeper.start()
    k1 = await first.rollover(1, 0x9001)
    k2 = await first.rollover(2, 0x9002)  # epoch 1's inbound SA is still there (no Retire yet)
    clock.t += 30
    again = Rig(tmp_path, clock, sim=first.sim)
    await again.keeper.start()
    assert not again.keeper.closed and again.keeper.epoch == 2
    assert again.events[0][0] == "tunnel_resumed" and again.alarms == []
    # The leftover inbound SA of epoch 1 goes at the next activation, not before.
    assert k1.spi_in in again.sim.inbound
    await again.rollover(3, 0x9003)
    assert k1.spi_in not in again.sim.inbound and k2.spi_in in again.sim.inbound

    # An SA deleted meanwhile (or replaced with another key): the tunnel starts closed.
    first.sim.outbound.clear()
    clock.t += 1
    third = Rig(tmp_path, clock, sim=first.sim)
    await third.keeper.start()
    assert third.keeper.closed and third.alarms == [(ALARM_EXPIRED, True)]
    assert not third.sim.inbound and third.sim.policies == 3


async def test_a_replaced_key_or_a_reboot_is_never_resumed(tmp_path: Path) -> None:
    clock = FakeClock()
    first = Rig(tmp_path, clock)
    await first.keeper.start()
    keys = await first.rollover(1, 0x9001)
    first.sim.outbound[0x9001] = Secret.random(36)  # same SPI, another key
    again = Rig(tmp_path, clock, sim=first.sim)
    await again.keeper.start()
    assert again.keeper.closed
    first.sim.inbound[keys.spi_in] = keys.esp_in
    first.sim.outbound[0x9001] = keys.esp_out
    rebooted = Rig(tmp_path, FakeClock(boot_id="boot-2"), sim=first.sim)
    await rebooted.keeper.start()
    assert rebooted.keeper.closed and not rebooted.sim.outbound


async def test_deadline_fails_closed_keeping_policies(tmp_path: Path) -> None:
    rig = Rig(tmp_path, reject_after=0.2)
    rig.keeper._clock = BootClock()  # real time for the watch task
    await rig.keeper.start()
    await rig.rollover(1, 0x9001)
    task = asyncio.create_task(rig.keeper.watch())
    for _ in range(200):
        if rig.keeper.closed:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert rig.keeper.closed and not rig.sim.inbound and not rig.sim.outbound
    assert rig.sim.policies == 3  # never a policy-less gap: packets are dropped, not sent clear
    assert rig.alarms[-1] == (ALARM_EXPIRED, True)
    assert rig.events[-1][0] == "tunnel_failed_closed" and rig.events[-1][1]["sas_removed"] == 2
    assert rig.keeper.status()["esp"]["key_in_use_epoch"] is None
    await rig.rollover(2, 0x9002)  # the next successful rekey opens it again
    assert not rig.keeper.closed and rig.alarms[-1] == (ALARM_EXPIRED, False)


async def test_a_refused_fail_closed_alarms_and_is_retried(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.keeper.start()
    await rig.rollover(1, 0x9001)
    rig.sim.broken = True
    await rig.keeper.expire("policy not met")
    assert rig.keeper.closed and rig.alarms[-1] == (ALARM_CLOSE_FAILED, True)
    assert rig.sim.outbound  # the kernel refused: the alarm is what an operator sees
    rig.sim.broken = False
    task = asyncio.create_task(rig.keeper.watch())
    for _ in range(200):  # the first retry comes after 1 s
        if not rig.sim.outbound:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert not rig.sim.outbound and (ALARM_CLOSE_FAILED, False) in rig.alarms


async def test_kernel_expiries_rekey_or_close(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.keeper.start()
    keys = await rig.rollover(1, 0x9001)
    larval = await rig.keeper.allocate_spi(2)
    await rig.keeper.on_sa_expired(rig.sim.expired(larval, inbound=True, hard=True))
    assert not rig.keeper.closed and rig.rekeys == []  # an abandoned SPI: nothing in use
    await rig.keeper.on_sa_expired(rig.sim.expired(0x9001, inbound=False, hard=False))
    assert rig.rekeys == ["soft lifetime reached"] and not rig.keeper.closed
    await rig.keeper.on_sa_expired(rig.sim.expired(keys.spi_in, inbound=True, hard=True))
    assert rig.keeper.closed and not rig.sim.outbound  # the backstop closed the tunnel
    rig.keeper.on_acquire(SaAcquire(LOCAL, REMOTE, rig.sim.reqid, None, 1))
    assert len(rig.rekeys) == 1  # expected while closed: no rekey storm


async def test_dispatch_routes_by_reqid_and_lost_events_verify(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.keeper.start()
    await rig.rollover(1, 0x9001)
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(e: str, **f: Any) -> None:
        events.append((e, f))

    foreign = EspSim(reqid=1).expired(0x9001, inbound=False, hard=True)
    await dispatch({"t1": rig.keeper}, foreign, emit)
    assert not rig.keeper.closed  # another daemon's SA: not ours to act on
    rig.sim.policies = 1  # someone deleted two of our policies, and notifications were lost
    await dispatch({"t1": rig.keeper}, XfrmEventsLost("ENOBUFS"), emit)
    assert rig.sim.policies == 3 and events[0][0] == "xfrm_notifications_lost"


async def test_verify_replaces_a_lost_sa_by_new_keys_and_closes_on_a_foreign_key(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.keeper.start()
    keys = await rig.rollover(1, 0x9001)
    assert not await rig.keeper.verify()
    del rig.sim.inbound[keys.spi_in]
    await rig.keeper.verify()
    # Never the same key again (GCM nonces restart with a new SA): a rekey is asked for.
    assert rig.rekeys == ["the inbound SA is gone"] and keys.spi_in not in rig.sim.inbound
    assert rig.events[-1][1]["slot"] == "inbound SA missing" and not rig.keeper.closed
    rig.sim.inbound[keys.spi_in] = Secret.random(36)
    assert await rig.keeper.verify()
    assert rig.keeper.closed and not rig.sim.outbound
    rig.assert_no_key_in_events()


async def test_failsafe_removes_sas_of_an_expired_tunnel_and_leaves_policies(
        tmp_path: Path) -> None:
    clock = FakeClock()
    rig = Rig(tmp_path, clock, reject_after=60)
    await rig.keeper.start()
    await rig.rollover(1, 0x9001)
    rig.sim.policies = 0  # e.g. torn down on purpose: the failsafe must not re-create policies
    clock.t += 10
    fresh = Rig(tmp_path, clock, sim=rig.sim, reject_after=60)
    assert await fresh.keeper.failsafe(horizon=15) is None  # still valid for 50 s
    assert rig.sim.outbound
    clock.t += 40
    late = Rig(tmp_path, clock, sim=rig.sim, reject_after=60)
    assert await late.keeper.failsafe(horizon=15) is not None
    assert not rig.sim.outbound and not rig.sim.inbound and rig.sim.policies == 0
    st = rig.store.load("t1")
    assert st is not None and st.closed


async def test_close_tears_down_only_when_asked(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.keeper.start()
    await rig.rollover(1, 0x9001)
    await rig.keeper.close(teardown=False)
    assert rig.sim.outbound and rig.sim.policies == 3 and rig.sim.closed_sockets == 1
    await rig.keeper.close(teardown=True)
    assert not rig.sim.outbound and rig.sim.policies == 0


async def test_the_action_runner_drives_an_esp_tunnel_through_the_protocols_actions(
        tmp_path: Path) -> None:
    """AllocateSpi -> SpiAllocated, InstallKeys -> Installed (or InstallFailed), Activate,
    Retire, Expire: the same runner as for WireGuard, no kind-specific branch."""
    rig = Rig(tmp_path)
    await rig.keeper.start()
    fed: list[object] = []
    runner = ActionRunner(pools={}, sources={}, keepers={"t1": rig.keeper},
                          bus=TelemetryBus(), feed=fed.append)
    task = asyncio.create_task(runner.run())

    async def settle(n: int) -> None:
        for _ in range(200):
            if len(fed) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"runner fed {fed}")

    try:
        runner.submit(AllocateSpi("t1", 1))
        await settle(1)
        assert isinstance(fed[0], SpiAllocated) and rig.sim.inbound[fed[0].spi] is None
        keys = rig.tunnel_keys(fed[0].spi, 0x9001)
        runner.submit(InstallKeys("t1", 1, keys))
        await settle(2)
        assert fed[1] == Installed("t1", 1) and rig.sim.inbound[keys.spi_in] == keys.esp_in
        runner.submit(Activate("t1", 1))
        for _ in range(200):
            if rig.sim.outbound:
                break
            await asyncio.sleep(0.01)
        assert rig.sim.outbound == {0x9001: keys.esp_out} and not rig.keeper.closed
        rig.sim.broken = True  # the kernel refuses the next inbound SA
        runner.submit(InstallKeys("t1", 2, rig.tunnel_keys(0x2222, 0x9002)))
        await settle(3)
        assert isinstance(fed[2], InstallFailed) and "ENOBUFS" in fed[2].reason
        rig.sim.broken = False
        runner.submit(Retire("t1", 1))
        runner.submit(Expire("t1", 1, "no new key within reject_after"))
        for _ in range(200):
            if rig.keeper.closed:
                break
            await asyncio.sleep(0.01)
        assert rig.keeper.closed and not rig.sim.inbound and not rig.sim.outbound
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    rig.assert_no_key_in_events()


async def test_spis_of_exchanges_never_retired_do_not_pile_up(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.keeper.start()
    await rig.rollover(1, 0x9001)
    abandoned = await rig.keeper.allocate_spi(2)  # aborted while gathering: no Retire comes
    await rig.rollover(3, 0x9003)
    await rig.rollover(4, 0x9004)
    assert abandoned not in rig.sim.inbound and set(rig.keeper._spis) <= {3, 4}
