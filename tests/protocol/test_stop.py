"""Issue 13: a clean stop (SIGTERM) wastes no QKD key, and what it still cuts short says so.

``Node.drain`` (``Endpoint.drain`` in the daemon's stop sequence): the stopping side starts no
exchange, tells its peers (RekeyAbort SHUTDOWN, the stop notice), which then start none towards
it either, and the exchanges in flight (either side's) run to their end. Whatever the session's
end still cuts short is reported with reason ``shutdown`` by the side that stops and
``peer_shutdown`` by its peer, never as ``session_lost`` (a fault). Two Nodes in memory
(tests/protocol/harness.py) and two Endpoints over real loopback TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest

from gateway.identity import SiteIdentity
from gateway.protocol import (
    Action,
    Endpoint,
    Installed,
    InstallKeys,
    KeysDiscarded,
    Mode,
    Node,
    PeerAddress,
    PeerConfig,
    TakeQkdKeys,
    TunnelPolicy,
)
from tests.protocol.conftest import assert_ids_announced_once
from tests.protocol.harness import FAST, KeyLink, Site, Wire, check_balance, make_pair

pytestmark = pytest.mark.unit
Ids = tuple[SiteIdentity, SiteIdentity]
Inits = list[tuple[str, str, int, tuple[str, ...]]]
POLS = [TunnelPolicy("t", Mode.QKD_PQC, ("k1",)), TunnelPolicy("u", Mode.QKD_PQC, ("k1",))]
# Exchanges never time out within these tests: only the stop ends them.
SLOW = dataclasses.replace(FAST, rekey_timeout=10.0)


def _run(w: Wire, start: float, until: float, step: float = 0.05) -> float:
    t = start
    while t < until - 1e-9:
        t += step
        w.tick(t)
    return t


def _takes(site: Site) -> int:
    return sum(1 for x in site.actions if isinstance(x, TakeQkdKeys))


def _keyed_pair(ids: Ids) -> tuple[Site, Site, Wire, float]:
    """Both tunnels keyed, then an exchange of A's on ``t`` in flight: B never confirms its
    install until the test says so."""
    a, b = make_pair(POLS, ids=ids, timers=SLOW)
    w = Wire(a, b)
    w.open()
    now = _run(w, 0.0, 0.5)
    assert a.active == b.active and set(a.active) == {"t", "u"}
    b.auto_install = False
    w.feed(a, a.node.rekey_now("t", now), now)
    assert a.node.exchanges_running() == b.node.exchanges_running() == 1
    return a, b, w, now


def test_a_drain_lets_the_exchange_in_flight_finish_and_starts_nothing_new(
        ids: Ids, inits: Inits) -> None:
    a, b, w, now = _keyed_pair(ids)
    epoch = a.node.tunnels["t"].pending.epoch  # type: ignore[union-attr]
    takes = (_takes(a), _takes(b))
    w.feed(a, a.node.drain(now), now)
    assert a.node.draining and b.node.peer_stopping("a")
    # Well past both ends' due times for "u" (A at 1 s, B at 1.5 s): neither starts anything.
    now = _run(w, now, 2.0)
    assert (_takes(a), _takes(b)) == takes
    for node in (a.node, b.node):
        with pytest.raises(ValueError, match="stopping"):
            node.rekey_now("u", now)
    # B's data plane answers late: the exchange ends normally, within the drain.
    w.feed(b, b.node.handle(Installed("t", epoch), now), now)
    assert a.node.exchanges_running() == b.node.exchanges_running() == 0
    assert a.active["t"] == b.active["t"] == epoch
    w.feed(a, a.node.connection_lost(1, now), now)
    w.feed(b, b.node.connection_lost(1, now), now)
    w.feed(a, a.node.shutdown(now), now)
    assert a.discarded() == b.discarded() == b.discarded(taken=False) == {}
    assert_ids_announced_once(inits)
    check_balance(a, b)


def test_what_the_stop_cuts_short_is_reported_as_shutdown_not_as_a_lost_session(
        ids: Ids, inits: Inits) -> None:
    a, b, w, now = _keyed_pair(ids)
    w.feed(a, a.node.drain(now), now)
    now = _run(w, now, 1.0)  # the drain's bound passes with B's install still unconfirmed
    w.feed(a, a.node.connection_lost(1, now), now)
    w.feed(b, b.node.connection_lost(1, now), now)
    w.feed(a, a.node.shutdown(now), now)
    assert a.discarded() == {"shutdown": 1}  # A's key, announced in its RekeyInit
    assert b.discarded(taken=False) == {"peer_shutdown": 1}  # the same key, fetched by B
    assert b.discarded() == {} and a.discarded(taken=False) == {}
    check_balance(a, b)
    # The notice belonged to that session: in a new one B rekeys again, and A, still
    # draining, answers (it only starts nothing itself).
    b.auto_install = True
    w.open(now)
    assert not b.node.peer_stopping("a")
    before = b.active["t"]
    w.feed(b, b.node.rekey_now("t", now), now)
    assert a.active["t"] == b.active["t"] > before
    assert_ids_announced_once(inits)
    check_balance(a, b)


def test_a_peer_that_announced_its_stop_but_stays_is_cut_after_dead_after(ids: Ids) -> None:
    a, b, w, now = _keyed_pair(ids)
    w.feed(a, a.node.drain(now), now)
    notice = now
    now = _run(w, now, notice + SLOW.dead_after - 0.1)
    assert w.closed == []  # keepalives flow both ways: only the notice's age counts
    _run(w, now, notice + SLOW.dead_after + 0.1)
    assert "b:peer_stop_overdue" in w.closed
    assert b.discarded(taken=False) == {"peer_shutdown": 1}


# -- over real TCP ---------------------------------------------------------------------------

async def _until(cond: object, timeout: float) -> None:
    assert callable(cond)
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def _pair(ids: Ids, stack: contextlib.AsyncExitStack, install_delay: list[float]
                ) -> tuple[Site, Site, Endpoint, Endpoint]:
    """Two endpoints on loopback; B confirms each install after ``install_delay[0]`` s
    (None: never)."""
    a_node = Node(ids[0], "sae-a", {"b": PeerConfig("sae-b", ids[1].public(), tuple(POLS))},
                  timers=SLOW)
    b_node = Node(ids[1], "sae-b", {"a": PeerConfig("sae-a", ids[0].public(), tuple(POLS))},
                  timers=SLOW)
    links = {"k1": KeyLink("k1")}
    sa, sb = Site(a_node, links), Site(b_node, links)
    loop = asyncio.get_running_loop()

    def perform(site: Site, ep: Endpoint, act: Action) -> None:
        if site is sb and isinstance(act, InstallKeys) and install_delay[0] >= 0:
            site.auto_install = False
            loop.call_later(install_delay[0], ep.handle, Installed(act.tunnel, act.epoch))
        ev = site.perform(act)
        if ev is not None:
            loop.call_soon(ep.handle, ev)

    ea = Endpoint(a_node, lambda act: perform(sa, ea, act))
    eb = Endpoint(b_node, lambda act: perform(sb, eb, act))
    stack.push_async_callback(eb.aclose)
    stack.push_async_callback(ea.aclose)
    port = await eb.listen("127.0.0.1", 0)
    ea.dial(PeerAddress("b", "127.0.0.1", port))
    await _until(lambda: len(sa.active) == len(sb.active) == 2, 10)
    return sa, sb, ea, eb


async def test_endpoint_drain_waits_for_the_exchange_and_the_stop_wastes_nothing(
        ids: Ids) -> None:
    delay = [-1.0]
    async with contextlib.AsyncExitStack() as stack:
        sa, sb, ea, eb = await _pair(ids, stack, delay)
        delay[0] = 0.3  # B's data plane takes 0.3 s per install from now on
        ea.rekey_now("t")
        await _until(lambda: ea.node.exchanges_running() > 0, 5)
        epoch = ea.node.tunnels["t"].pending.epoch  # type: ignore[union-attr]
        assert await ea.drain(5.0) == 0
        assert sa.active["t"] == epoch
        await ea.aclose()
        await _until(lambda: eb.node.session_conn("a") is None, 5)
        await eb.aclose()
    for site in (sa, sb):
        assert [x for x in site.actions if isinstance(x, KeysDiscarded)] == []
    check_balance(sa, sb)


async def test_endpoint_closed_without_a_drain_still_tells_the_peer(ids: Ids) -> None:
    delay = [-1.0]
    async with contextlib.AsyncExitStack() as stack:
        sa, sb, ea, eb = await _pair(ids, stack, delay)
        delay[0] = 3600.0  # B never confirms: A's exchange stays in flight
        ea.rekey_now("t")
        await _until(lambda: eb.node.exchanges_running() > 0, 5)
        await ea.aclose()
        await _until(lambda: eb.node.session_conn("a") is None, 5)
        assert sa.discarded() == {"shutdown": 1}
        assert sb.discarded(taken=False) == {"peer_shutdown": 1}
        await eb.aclose()
    check_balance(sa, sb)
