"""Fuzzing the state machine: arbitrary bytes, replayed frames and arbitrary message orders.

The invariant: the core never raises; bad input at most closes the connection it came in on, and
never changes the state of a tunnel (epoch, active key, pending exchange) or of another session.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.keymaterial import Secret
from gateway.kms.types import QKDKey
from gateway.protocol import (
    Activate,
    Close,
    Installed,
    InstallKeys,
    KeysFetched,
    KeysFetchFailed,
    KeysTaken,
    Mode,
    SpiAllocated,
    TunnelPolicy,
)
from gateway.protocol.inner import (
    AbortCode,
    Keepalive,
    KeyCheck,
    RekeyAbort,
    RekeyConfirm,
    RekeyInit,
    RekeyResp,
    encode_inner,
)
from gateway.protocol.rekey import Tunnel
from tests.protocol.harness import Site, Wire, make_pair

POLS = [TunnelPolicy("t", Mode.QKD_PQC, ("k1",)), TunnelPolicy("p", Mode.PQC)]


def _snapshot(t: Tunnel) -> tuple[Any, ...]:
    p = t.pending
    return (t.active_epoch, t.active_at, t.highest, t.expired,
            None if p is None else (p.epoch, p.stage, p.initiator, frozenset(p.waiting)))


def _keep(store: list[bytes], d: bytes) -> bytes:
    store.append(d)
    return d


@pytest.fixture(scope="module")
def recorded(ids: Any) -> tuple[Site, Site, list[bytes]]:
    a, b = make_pair(POLS, ids=ids)
    frames: list[bytes] = []
    w = Wire(a, b, tamper=lambda side, d: _keep(frames, d) if side == "a" else d)
    w.open()
    for t in (0.5, 1.0):
        w.tick(t)
    return a, b, frames


@pytest.mark.fuzz
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=300), st.integers(0, 50)), max_size=12),
       st.integers(2, 4))
def test_garbage_and_replays_on_other_connections_change_nothing(
        recorded: tuple[Site, Site, list[bytes]], ops: list[bytes | int], conn: int) -> None:
    _a, b, frames = recorded
    before = {n: _snapshot(t) for n, t in b.node.tunnels.items()}
    b.node.accept(conn, 1.0)
    closed = False
    for op in ops:
        data = frames[op % len(frames)] if isinstance(op, int) else op
        out = b.node.receive(conn, data, 1.0)
        closed = closed or any(isinstance(x, Close) and x.conn == conn for x in out.actions)
        assert not any(isinstance(x, InstallKeys | Activate) for x in out.actions)
    if not closed:
        b.node.connection_lost(conn, 1.0)
    assert {n: _snapshot(t) for n, t in b.node.tunnels.items()} == before
    assert b.node.session_conn("a") == 1
    assert b.node.pending_connections() == 0


B32 = st.binary(min_size=32, max_size=32)
EPOCH = st.one_of(st.integers(0, 6), st.just(2**64 - 1))
TUN = st.sampled_from(["t", "p", "zz"])
INNER = st.one_of(
    st.builds(RekeyInit, TUN, EPOCH, st.sampled_from(list(Mode)),
              st.lists(st.sampled_from(["", "id-1", "id-2"]), max_size=2).map(tuple),
              st.sampled_from([b""]), B32, B32, st.sampled_from([0, 300])),
    st.builds(RekeyResp, TUN, EPOCH, st.integers(0, 255), st.just(b""), B32, B32, st.sampled_from([0, 300]),
              st.binary(min_size=48, max_size=48)),
    st.builds(RekeyConfirm, TUN, EPOCH, st.binary(min_size=48, max_size=48)),
    st.builds(RekeyAbort, TUN, EPOCH, st.sampled_from(list(AbortCode)), EPOCH),
    st.just(Keepalive()),
    st.builds(lambda es: Keepalive(tuple(es)), st.lists(st.builds(
        KeyCheck, TUN, EPOCH, st.sampled_from([bytes(16), b"c" * 16]), st.integers(0, 3)),
        max_size=3)),
)
EVENTS = st.one_of(
    st.builds(KeysTaken, TUN, EPOCH, st.just("k1"),
              st.just((QKDKey("id-9", Secret(b"k" * 32)),))),
    st.builds(KeysFetched, TUN, EPOCH, st.just("k1"),
              st.sampled_from([(QKDKey("id-1", Secret(b"k" * 32)),),
                               (QKDKey("id-1", Secret(b"short")),), ()])),
    st.builds(KeysFetchFailed, TUN, EPOCH, st.just("k1"), st.just("gone")),
    st.builds(SpiAllocated, TUN, EPOCH, st.sampled_from([0, 255, 300, 2**32])),
    st.builds(Installed, TUN, EPOCH),
)


@pytest.mark.fuzz
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(INNER.map(lambda m: ("msg", m)), EVENTS.map(lambda e: ("ev", e)),
                          st.floats(0, 1.9).map(lambda t: ("tick", t))), max_size=15))
def test_authenticated_peer_sending_arbitrary_message_orders(ids: Any,
                                                             ops: list[tuple[str, Any]]) -> None:
    a, b = make_pair(POLS, ids=ids)
    w = Wire(a, b)
    w.open()
    channel = a.node._conns[1].channel  # A's real sending channel: B sees authentic records
    assert channel is not None
    active_before = dict(b.active)
    now = 0.0
    for kind, x in ops:
        if kind == "msg":
            out = b.node.receive(1, channel.seal(encode_inner(x)), now)
        elif kind == "ev":
            out = b.node.handle(x, now)
        else:
            now = max(now, x)
            out = b.node.tick(now)
        for act in out.actions:
            # Random MACs never verify: nothing may be activated from this input.
            assert not isinstance(act, Activate)
            assert not isinstance(act, Close)  # authentic records never cut the session
    assert b.active == active_before


@pytest.mark.unit
def test_extreme_epochs_from_a_peer_are_refused_without_crashing(ids: Any) -> None:
    a, b = make_pair(POLS, ids=ids)
    w = Wire(a, b)
    w.open()
    channel = a.node._conns[1].channel
    assert channel is not None
    top = 2**64 - 1
    for msg in (RekeyAbort("p", b.node.tunnels["p"].last_attempt, AbortCode.STALE_EPOCH, top),
                RekeyInit("p", top, Mode.PQC, (), b"e" * 1184, b"x" * 32, b"n" * 32, 0)):
        out = b.node.receive(1, channel.seal(encode_inner(msg)), 0.5)
        assert not any(isinstance(x, Close) for x in out.actions)
    assert b.node.tunnels["p"].highest < 2**20
    out = b.node.tick(1.9)  # B's own next attempt still has a valid epoch
    assert b.node.tunnels["p"].last_attempt < 2**21
