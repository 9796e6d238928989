"""Issue 13: no QKD key leaves the KMS unaccounted for, and the avoidable losses are gone.

Every key a site takes (as ETSI 014 master) ends up activated, reported discarded with a reason
(``KeysDiscarded``), or still held by its core (a spare for the next attempt, an unfinished
exchange): ``check_balance``. A key whose ID went out in a RekeyInit is never offered again
(``assert_ids_announced_once``); one whose ID never left the site is reused. Two Nodes in memory
(tests/protocol/harness.py) with real keys, real ML-KEM/X25519, real AEAD.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.identity import SiteIdentity
from gateway.protocol import KeysDiscarded, Mode, PeerConfig, TakeQkdKeys, TunnelPolicy
from tests.protocol.conftest import assert_ids_announced_once
from tests.protocol.harness import FAST, Site, Wire, activated_ids, check_balance, make_pair

pytestmark = pytest.mark.unit
Ids = tuple[SiteIdentity, SiteIdentity]
Inits = list[tuple[str, str, int, tuple[str, ...]]]
POL = [TunnelPolicy("t", Mode.QKD_PQC, ("k1",))]
# Both ends due at the same instant: every rekey starts as a collision.
EQUAL = dataclasses.replace(FAST, rekey_after_backup=FAST.rekey_after)


def _run(w: Wire, until: float, step: float = 0.05, start: float = 0.0) -> float:
    t = start
    while t < until - 1e-9:
        t += step
        w.tick(t)
    return t


def _takes(site: Site, tunnel: str = "t") -> list[int]:
    return [x.epoch for x in site.actions if isinstance(x, TakeQkdKeys) and x.tunnel == tunnel]


def test_a_collision_lost_while_gathering_keeps_its_key_for_the_next_attempt(
        ids: Ids, inits: Inits) -> None:
    a, b = make_pair(POL, ids=ids, timers=EQUAL)
    b.hold_takes = True  # B's KMS is slow: A's RekeyInit arrives while B still gathers
    w = Wire(a, b)
    w.open()
    assert _takes(a) == [1] and _takes(b) == [2]
    assert a.active["t"] == b.active["t"] == 1  # B lost the collision and answered A
    assert b.discarded() == {} and b.node.tunnels["t"].spare_ids() == []
    w.release(b, 0.0)  # the take answers after its attempt ended: the key is kept, not dropped
    (spare,) = b.node.tunnels["t"].spare_ids()
    check_balance(a, b)
    b.hold_takes = False
    w.feed(b, b.node.rekey_now("t", 0.1), 0.1)  # B's next attempt offers the kept key
    assert _takes(b) == [2], "B took a new key instead of reusing the unannounced one"
    assert spare in activated_ids(a, b) and b.active["t"] == a.active["t"] > 1
    assert a.discarded() == b.discarded() == {}
    assert_ids_announced_once(inits)
    check_balance(a, b)


def test_the_preferred_side_yields_while_it_still_gathers(ids: Ids, inits: Inits) -> None:
    """Under load the preferred side's start waits for an exchange slot and for its KMS, and
    the backup steps in after its margin: a collision. The preferred side has not announced
    its key IDs yet, so it yields to the backup's RekeyInit and keeps its key: nothing spent."""
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()
    now = _run(w, 3.0)
    a.hold_takes = True  # A's KMS stops answering
    before_a, before_b = len(_takes(a)), len(_takes(b))
    while len(_takes(b)) == before_b:  # until the backup steps in
        now = _run(w, now + 0.05, start=now)
        assert now < 10
    assert len(_takes(a)) == before_a + 1 and a.node.tunnels["t"].pending is None
    # A answered B's RekeyInit: the epoch B started is active at both ends.
    assert a.active["t"] == b.active["t"] == max(x.epoch for x in b.actions
                                                 if isinstance(x, TakeQkdKeys))
    w.release(a, now)  # A's key arrives after A gave up its attempt: kept, not dropped
    assert len(a.node.tunnels["t"].spare_ids()) == 1
    a.hold_takes = False
    taken = len(a.taken)
    now = _run(w, now + 1.5, start=now)  # A's next rekey offers the kept key
    assert a.node.tunnels["t"].spare_ids() == [] and len(a.taken) == taken
    assert a.discarded() == b.discarded() == {}
    assert_ids_announced_once(inits)
    check_balance(a, b)


@pytest.mark.parametrize(("late", "stands_by"), [(0.2, False), (0.3, True), (1.45, True),
                                                 (1.55, False)])
def test_a_late_preferred_side_stands_by_for_the_backup(ids: Ids, inits: Inits, late: float,
                                                          stands_by: bool) -> None:
    """A's start comes ``late`` s after its due time (its exchange slots were full). Around
    the backup's own due time (1.5 s after the last key; margin 0.5 s) A stands by for B's
    RekeyInit instead of crossing it: from 0.25 s before to 1 s after (two margins; later
    than halfway to reject_after, 2 s after the last key); outside, it starts."""
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()
    now = _run(w, 3.0)
    base = a.node.tunnels["t"].active_at
    assert base is not None
    before = len(_takes(a))
    w.feed(a, a.node.tick(base + FAST.rekey_after + late), base + FAST.rekey_after + late)
    assert (len(_takes(a)) == before) == stands_by
    if stands_by:  # B steps in by its own timer, A answers: one exchange, no collision
        t = base + FAST.rekey_after_backup
        w.feed(b, b.node.tick(t), t)
        assert a.active["t"] == b.active["t"] and a.active["t"] % 2 == 0  # B's epoch
        assert len(_takes(a)) == before
    assert a.discarded() == b.discarded() == {}
    _run(w, now + 3.0, start=now + 2.0)
    assert_ids_announced_once(inits)
    check_balance(a, b)


def test_a_lost_session_discards_announced_keys_and_keeps_the_others(
        ids: Ids, inits: Inits) -> None:
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()
    now = _run(w, 0.5)
    # A's RekeyInit is out (B never answers: its data plane does not confirm) when the
    # session goes: that key is spent.
    b.auto_install = False
    w.feed(a, a.node.rekey_now("t", now), now)
    assert a.node.tunnels["t"].pending is not None
    w.feed(a, a.node.connection_lost(1, now), now)
    w.feed(b, b.node.connection_lost(1, now), now)
    assert a.discarded() == {"session_lost": 1} and b.discarded(taken=False) == {
        "session_lost": 1}
    # Next session: A is still gathering (slow KMS) when it goes: the key is kept.
    b.auto_install, a.hold_takes = True, True
    w.open(now)
    w.feed(a, a.node.rekey_now("t", now + 2), now + 2)
    w.feed(a, a.node.connection_lost(1, now + 2), now + 2)
    w.feed(b, b.node.connection_lost(1, now + 2), now + 2)
    w.release(a, now + 2)
    assert len(a.node.tunnels["t"].spare_ids()) == 1
    assert a.discarded() == {"session_lost": 1}
    assert_ids_announced_once(inits)
    check_balance(a, b)


def test_timeouts_are_reported_at_both_ends(ids: Ids, inits: Inits) -> None:
    a, b = make_pair(POL, ids=ids)
    b.auto_install = False  # B never answers: every attempt times out
    w = Wire(a, b)
    w.open()
    _run(w, 3.0)
    assert a.discarded().get("timeout", 0) >= 1
    assert b.discarded(taken=False).get("timeout", 0) >= 1
    assert "t" not in a.active
    assert_ids_announced_once(inits)
    check_balance(a, b)


def test_shutdown_and_removal_report_every_key_still_held(ids: Ids, inits: Inits) -> None:
    pols = [TunnelPolicy("t1", Mode.QKD_PQC, ("k1",)), TunnelPolicy("t2", Mode.QKD_PQC, ("k1",))]
    a, b = make_pair(pols, ids=ids)
    w = Wire(a, b)
    w.open()
    now = _run(w, 0.5)
    # t2 is removed while A's take for it is on its way: reported when it arrives.
    a.hold_tunnels.add("t2")
    w.feed(a, a.node.rekey_now("t2", now), now)
    peers = {"b": dataclasses.replace(a.node.peers["b"], tunnels=(pols[0],))}
    w.feed(a, a.node.reconfigure(peers, now), now)
    w.release(a, now)
    assert a.discarded() == {"removed": 1}
    # t1: a key kept from an attempt that never went out, and one in an unanswered exchange.
    b.auto_install, a.hold_tunnels = False, {"t1"}
    w.feed(a, a.node.rekey_now("t1", now), now)
    w.feed(a, a.node.connection_lost(1, now), now)
    w.release(a, now)  # the spare
    w.open(now)
    a.hold_tunnels = set()
    w.feed(a, a.node.rekey_now("t1", now + 0.01), now + 0.01)  # uses the spare; then a new one
    assert a.node.tunnels["t1"].pending is not None
    out = a.node.shutdown(now + 0.02)
    assert all(isinstance(x, KeysDiscarded) and x.reason == "shutdown" for x in out.actions)
    w.feed(a, out, now + 0.02)
    assert a.held_by_core() == 0 and a.discarded()["shutdown"] >= 1
    assert_ids_announced_once(inits)
    check_balance(a, b)
    assert isinstance(b.node.peers["a"], PeerConfig)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["tick", "hold", "release", "drop", "stall",
                                                  "rekey_a", "rekey_b"]),
                                st.floats(0.01, 0.6)), min_size=5, max_size=40),
       equal=st.booleans())
def test_any_schedule_balances_and_never_offers_an_announced_key_again(
        ids: Ids, inits: Inits, steps: list[tuple[str, float]], equal: bool) -> None:
    inits.clear()
    a, b = make_pair(POL, ids=ids, timers=EQUAL if equal else FAST)
    w = Wire(a, b)
    w.open()
    now, up = 0.0, True
    for op, dt in steps:
        now += dt
        if op == "tick":
            w.tick(now)
        elif op == "hold":
            a.hold_takes = b.hold_takes = True
        elif op == "release":
            a.hold_takes = b.hold_takes = False
            w.release(a, now)
            w.release(b, now)
        elif op == "drop" and up:
            w.feed(a, a.node.connection_lost(1, now), now)
            w.feed(b, b.node.connection_lost(1, now), now)
            up = False
        elif op == "drop":
            w.open(now)
            up = True
        elif op == "stall":
            b.auto_install = not b.auto_install
        elif up and op in ("rekey_a", "rekey_b"):
            s = a if op == "rekey_a" else b
            if s.node.tunnels["t"].enabled_at is not None:
                w.feed(s, s.node.rekey_now("t", now), now)
        w.tick(now)
    assert_ids_announced_once(inits)
    check_balance(a, b)
    for s in (a, b):
        w.feed(s, s.node.shutdown(now), now)
        assert s.held_by_core() == 0
    check_balance(a, b)
