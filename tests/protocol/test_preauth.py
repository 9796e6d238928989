"""Pre-authentication hardening (issue 9 items 1 and 2) at the core and admission level.

* A Hello is checked cheaply before any expensive work: a replay (not newer than the last Hello
  accepted from that peer), a Hello outside the clock window and a forged one are refused
  without a reply and without a job (the job is where ML-KEM and the signatures run).
* With ``offload`` the expensive part is a Job for a worker thread; the loop stays free.
* An accepted connection that sends no Hello is cut after ``hello_timeout``.
* Admission: per-source and global caps, reserved slots for peer addresses, a token bucket.
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.identity import SiteIdentity
from gateway.protocol import Admission, Close, Job, Mode, Output, TunnelPolicy
from gateway.protocol.admission import source_of
from gateway.protocol.messages import FrameType, Hello
from gateway.protocol.wire import FrameSplitter, encode_frame
from tests.protocol.harness import FAST, Site, Wire, make_pair

pytestmark = pytest.mark.unit
Ids = tuple[SiteIdentity, SiteIdentity]
POL = [TunnelPolicy("t", Mode.PQC)]
WALL = 1_764_000_000.0  # a wall clock for the Hello timestamps


def _hello_of(a: Site, now: float = 0.0, wall: float = WALL) -> bytes:
    """A genuine Hello of A's (what an on-path observer captures)."""
    out = a.node.connect(99, "b", now, wall)
    a.node.connection_lost(99, now)
    return out.sends[0].data


def _closed(out: Output) -> str:
    reasons = [x.reason for x in out.actions if isinstance(x, Close)]
    assert len(reasons) == 1, out.actions
    return reasons[0]


def test_a_replayed_hello_is_refused_before_any_expensive_work(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    b.node.offload = True
    hello = _hello_of(a)
    b.node.accept(1, 0.0)
    first = b.node.receive(1, hello, 0.0, WALL)
    assert len(first.jobs) == 1 and not first.actions  # genuine and fresh: the expensive part
    for conn in range(2, 50):  # the same Hello again, on new connections, at full speed
        b.node.accept(conn, 0.1)
        out = b.node.receive(conn, hello, 0.1, WALL)
        assert "stale_hello" in _closed(out) and "replay" in _closed(out)
        assert out.sends == [] and out.jobs == []
    assert b.node.pending_connections() == 1


def test_a_hello_outside_the_clock_window_is_refused(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    b.node.accept(1, 0.0)
    out = b.node.receive(1, _hello_of(a, wall=WALL - 3600), 0.0, WALL)
    assert "stale_hello" in _closed(out) and "NTP" in _closed(out)
    assert out.sends == [] and out.jobs == []


def test_a_forged_hello_naming_a_pinned_peer_costs_one_ed25519_verification(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    b.node.offload = True
    raw = FrameSplitter().feed(_hello_of(a))[0].payload
    forged = dataclasses.replace(Hello.decode(raw), signature=bytes(64)).encode()
    b.node.accept(1, 0.0)
    out = b.node.receive(1, encode_frame(FrameType.HELLO, forged), 0.0, WALL)
    assert "bad_signature" in _closed(out) and out.jobs == [] and out.sends == []
    # The forgery did not advance the replay window: A's genuine Hello still gets in.
    b.node.accept(2, 0.0)
    assert len(b.node.receive(2, _hello_of(a, now=0.1), 0.1, WALL).jobs) == 1


def test_offloaded_handshake_completes_through_jobs(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    a.node.offload = b.node.offload = True
    pending: list[tuple[Site, Job]] = []
    w = Wire(a, b)

    def absorb(site: Site, out: Output) -> None:
        pending.extend((site, j) for j in out.jobs)
        w._absorb(site, out, 0.0)

    absorb(b, b.node.accept(1, 0.0))
    absorb(a, a.node.connect(1, "b", 0.0, WALL))
    while w.queue or pending:
        while w.queue:
            site, data = w.queue.pop(0)
            absorb(site, site.node.receive(1, data, 0.0, WALL))
        if pending:
            site, job = pending.pop(0)
            absorb(site, site.node.job_done(job, job.run(), 0.0))  # as the worker thread would
    assert a.node.session_conn("b") == 1 and b.node.session_conn("a") == 1
    assert a.keys("t").wg_psk == b.keys("t").wg_psk


def test_bytes_during_a_job_end_the_connection_and_a_late_result_is_dropped(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    b.node.offload = True
    b.node.accept(1, 0.0)
    job = b.node.receive(1, _hello_of(a), 0.0, WALL).jobs[0]
    out = b.node.receive(1, encode_frame(FrameType.FINISH, b"x"), 0.0, WALL)
    assert "unexpected_message" in _closed(out)
    assert b.node.job_done(job, job.run(), 0.1) == Output.empty()  # nothing left to answer


def test_an_idle_connection_is_cut_after_the_hello_timeout(ids: Ids) -> None:
    _a, b = make_pair(POL, ids=ids)
    b.node.accept(1, 0.0)
    assert b.node.next_deadline() == FAST.hello_timeout
    assert b.node.tick(FAST.hello_timeout - 0.01) == Output.empty()
    assert _closed(b.node.tick(FAST.hello_timeout)) == "hello_timeout"
    assert b.node.pending_connections() == 0
    # A connection that delivered its Hello gets the whole handshake_timeout.
    a2, b2 = make_pair(POL, ids=ids)
    b2.node.accept(1, 0.0)
    b2.node.receive(1, _hello_of(a2), 0.0, WALL)
    assert b2.node.tick(FAST.hello_timeout + 0.1) == Output.empty()
    assert _closed(b2.node.tick(FAST.handshake_timeout)) == "handshake_timeout"


# -- admission ----------------------------------------------------------------------------------

def test_per_source_and_global_caps() -> None:
    adm = Admission(max_pending=6, per_source=2, rate=1000, burst=1000)
    assert [adm.admit("10.0.0.1", 0).admitted for _ in range(3)] == [True, True, False]
    for i in range(2, 6):
        adm.admit(f"10.0.0.{i}", 0)
    assert adm.pending == 6
    verdict = adm.admit("10.0.0.99", 0)
    assert not verdict.admitted and verdict.reason == "too many unauthenticated connections"
    adm.release("10.0.0.1", False)
    assert adm.admit("10.0.0.99", 0).admitted


def test_a_flood_cannot_take_a_pinned_peers_reserved_slots() -> None:
    adm = Admission(max_pending=4, per_source=4, rate=1000, burst=1000)
    adm.set_peer_sources(["192.0.2.7"])
    for i in range(50):  # attackers fill the global cap from many addresses
        adm.admit(f"198.51.100.{i}", 0)
    assert adm.pending == 4
    first = adm.admit("192.0.2.7", 0)
    assert first.admitted and first.reserved
    assert adm.admit("192.0.2.7", 0).admitted  # two reserved slots (RESERVED_PER_PEER)
    assert not adm.admit("192.0.2.7", 0).admitted  # beyond them it competes like anyone
    adm.release("192.0.2.7", True)
    assert adm.admit("192.0.2.7", 0).reserved


def test_token_bucket_limits_the_connection_rate_of_a_source() -> None:
    adm = Admission(max_pending=1000, per_source=1000, rate=5.0, burst=10.0)
    admitted = [adm.admit("203.0.113.5", 0.0).admitted for _ in range(30)]
    assert admitted.count(True) == 10  # the burst
    later = [adm.admit("203.0.113.5", 1.0).admitted for _ in range(30)]
    assert later.count(True) == 5  # refilled at 5 per second
    assert adm.admit("203.0.113.6", 1.0).admitted  # other sources have their own bucket


def test_an_ipv6_host_counts_as_its_slash_64() -> None:
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_of("192.0.2.1") == "192.0.2.1"
