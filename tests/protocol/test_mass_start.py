"""Issue 13: many tunnels keyed at once (a session start) without rekey collisions.

A 200-tunnel soak start on a loaded machine spent 64 keys ``session_lost`` and 36 ``collision``
in its first 3 s. The cause, from the daemons' logs: both daemons dial each other at start; the
session B dialled came up first, A (the lower SAE ID, preferred) started 64 exchanges on it, and
~0.1 s later A's own session replaced it (the rule: both ends keep the session the lower SAE ID
dialled), cutting those exchanges short. A then retried them after its 1 s backoff, which does
not wait for the backup, and B, whose margin (1/12 of the 10 s interval) had passed, started the
same tunnels: crossed RekeyInits, each spending B's key. Now (session.py ``_superseded_soon``)
no exchange starts on a session that a handshake under way will replace.

Second, a preferred side whose KMS answers late (its take queued behind the other tunnels'
at a mass start) no longer sends a RekeyInit once the backup has stepped in: it keeps its
(never announced) key and answers the backup (rekey.py ``_gathered``).

Two real cores in memory (real keys, ML-KEM, X25519, AEAD); ``LaggyWire`` delivers each message
``lag`` s after it was sent, ``SerialKms`` serves one take at a time.
"""

from __future__ import annotations

import pytest

from gateway.identity import SiteIdentity
from gateway.protocol import (
    Close,
    Event,
    KeysDiscarded,
    Mode,
    Output,
    TakeQkdKeys,
    Timers,
    TunnelPolicy,
)
from tests.protocol.conftest import assert_ids_announced_once
from tests.protocol.harness import Site, Wire, check_balance, make_pair

pytestmark = pytest.mark.unit
Ids = tuple[SiteIdentity, SiteIdentity]
Inits = list[tuple[str, str, int, tuple[str, ...]]]

# The soak's schedule: a rotation every 10 s, the backup 10/12 s later, keys valid for 30 s.
SOAK = Timers(rekey_after=10.0, rekey_after_backup=10.0 * 13 / 12, reject_after=30.0,
              rekey_timeout=30.0, keepalive_interval=10.0, dead_after=30.0, retire_grace=1.0)
TAKE_S = 0.01  # a loaded KMS: one take served every 10 ms, in order
LAG_S = 0.05  # one-way delivery time (a WAN, or a busy event loop)
STEP_S = 0.01


class LaggyWire(Wire):
    """The harness's in-order wire, but every message arrives ``lag`` s after it was sent."""

    def __init__(self, a: Site, b: Site, lag: float) -> None:
        super().__init__(a, b)
        self.lag = lag
        self.stamps: list[float] = []  # delivery time of each queued message, in queue order

    def run(self, now: float) -> None:
        while True:
            self.stamps += [now + self.lag] * (len(self.queue) - len(self.stamps))
            if not self.queue or self.stamps[0] > now:
                return
            site, data = self.queue.pop(0)
            self.stamps.pop(0)
            self._absorb(site, site.node.receive(1, data, now), now)


class SerialKms:
    """A site's KMS serving held takes one at a time, ``per_take`` s each, first come first
    served (the harness holds every take result until released)."""

    def __init__(self, site: Site, per_take: float) -> None:
        self.site, self.per_take = site, per_take
        self.done_at: dict[int, float] = {}
        self.busy_until = 0.0

    def serve(self, w: Wire, now: float) -> None:
        for ev in self.site.held:
            if id(ev) not in self.done_at:
                self.busy_until = max(self.busy_until, now) + self.per_take
                self.done_at[id(ev)] = self.busy_until
        ready: list[Event] = [ev for ev in self.site.held if self.done_at[id(ev)] <= now]
        if ready:
            self.site.held = [ev for ev in self.site.held if self.done_at[id(ev)] > now]
            for ev in ready:
                w.feed(self.site, self.site.node.handle(ev, now), now)


def _collisions(*sites: Site) -> int:
    return sum(x.count for s in sites for x in s.actions
               if isinstance(x, KeysDiscarded) and x.reason == "collision")


def mass_start(ids: Ids, n: int, until: float) -> tuple[Site, Site, float]:
    """``n`` tunnels come up in one session; run the schedule until ``until``."""
    pols = [TunnelPolicy(f"t{i}", Mode.QKD_PQC, ("k1",)) for i in range(n)]
    a, b = make_pair(pols, ids=ids, timers=SOAK)
    a.hold_takes = b.hold_takes = True
    w = LaggyWire(a, b, LAG_S)
    kmss = [SerialKms(a, TAKE_S), SerialKms(b, TAKE_S)]
    w.open(0.0)
    now = 0.0
    while now < until:
        now = round(now + STEP_S, 6)
        for kms in kmss:
            kms.serve(w, now)
        w.tick(now)
    return a, b, now


def test_a_session_start_with_200_tunnels_keys_them_all_without_a_collision(
        ids: Ids, inits: Inits) -> None:
    """The soak's start in one session: a KMS serving a take every 10 ms (64 in flight take
    0.64 s, more than half the 0.83 s margin) and 50 ms each way."""
    # 25 s: the first key of every tunnel and two rotations after it, as in the soak's start.
    a, b, _now = mass_start(ids, 200, 25.0)
    names = [f"t{i}" for i in range(200)]
    assert all(a.active.get(t, 0) == b.active.get(t, 0) > 0 for t in names)
    assert min(sum(1 for t, _ in a.activated if t == name) for name in names) >= 2
    # Both ends took part (the backup keyed the tunnels the preferred side had not started).
    first = {t: e for t, e in reversed(a.activated)}
    assert {e % 2 for e in first.values()} == {0, 1}
    assert _collisions(a, b) == 0, {s.node.sae_id: s.discarded() for s in (a, b)}
    assert a.discarded() == b.discarded() == {}
    assert_ids_announced_once(inits)
    check_balance(a, b)


class TwoConnWire:
    """Both sites dial each other at once: conn 1 is B's dial, conn 2 A's. Messages wait per
    connection until :meth:`deliver` is called for it (in order)."""

    def __init__(self, a: Site, b: Site) -> None:
        self.a, self.b = a, b
        self.queue: dict[int, list[tuple[Site, bytes]]] = {1: [], 2: []}
        self.closed: list[str] = []

    def absorb(self, site: Site, out: Output, now: float) -> None:
        other = self.b if site is self.a else self.a
        for s in out.sends:
            self.queue[s.conn].append((other, s.data))
        for act in out.actions:
            ev = site.perform(act)
            if ev is not None:
                self.absorb(site, site.node.handle(ev, now), now)
            if isinstance(act, Close):
                self.closed.append(f"{'a' if site is self.a else 'b'}:{act.conn}:{act.reason}")

    def open_both(self, now: float) -> None:
        self.absorb(self.a, self.a.node.accept(1, now), now)
        self.absorb(self.b, self.b.node.accept(2, now), now)
        self.absorb(self.b, self.b.node.connect(1, "a", now), now)
        self.absorb(self.a, self.a.node.connect(2, "b", now), now)

    def deliver(self, conn: int, now: float, count: int | None = None) -> None:
        n = 0
        while self.queue[conn] and (count is None or n < count):
            site, data = self.queue[conn].pop(0)
            self.absorb(site, site.node.receive(conn, data, now), now)
            n += 1


def _takes(site: Site) -> int:
    return sum(1 for x in site.actions if isinstance(x, TakeQkdKeys))


def test_no_exchange_starts_on_a_session_that_a_handshake_under_way_replaces(
        ids: Ids, inits: Inits) -> None:
    """Both daemons dial each other at start. B's dial completes first; A's own handshake
    (A has the lower SAE ID: its session is the one both keep) is under way. Exchanges started
    on B's session were cut short ~0.1 s later with it: 64 keys ``session_lost`` and, through
    A's retries after 1 s crossing B's first start after its 0.83 s margin, 36 collisions, in
    one soak start. Now both ends wait for the session that stays."""
    pols = [TunnelPolicy(f"t{i}", Mode.QKD_PQC, ("k1",)) for i in range(8)]
    a, b = make_pair(pols, ids=ids, timers=SOAK)
    b.auto_install = False  # were an exchange started on B's session, it would stay in flight
    w = TwoConnWire(a, b)
    w.open_both(0.0)
    w.deliver(2, 0.0, count=1)  # A's Hello, answered by B: A has not seen the reply yet
    w.deliver(1, 0.0)  # B's session comes up and both policy lists are exchanged on it
    assert a.node.session_conn("b") == 1 and b.node.session_conn("a") == 1
    w.deliver(1, 0.0)
    assert _takes(a) == _takes(b) == 0, "an exchange started on the session about to go"
    b.auto_install = True
    w.deliver(2, 0.01)  # A's session completes and replaces B's at both ends
    for _ in range(5):
        w.deliver(1, 0.01)
        w.deliver(2, 0.01)
    assert a.node.session_conn("b") == b.node.session_conn("a") == 2
    assert all(a.active.get(p.name, 0) == b.active.get(p.name, 0) > 0 for p in pols)
    assert a.discarded() == b.discarded() == b.discarded(taken=False) == {}
    assert_ids_announced_once(inits)
    check_balance(a, b)


def test_a_handshake_that_fails_releases_the_held_back_starts(ids: Ids) -> None:
    pols = [TunnelPolicy("t0", Mode.QKD_PQC, ("k1",))]
    a, b = make_pair(pols, ids=ids, timers=SOAK)
    w = TwoConnWire(a, b)
    w.open_both(0.0)
    w.deliver(2, 0.0, count=1)
    w.deliver(1, 0.0)
    w.deliver(1, 0.0)
    assert _takes(a) == 0
    # A's own dial dies before its Finish: B's session is the one; A starts at once.
    w.absorb(a, a.node.connection_lost(2, 0.05), 0.05)
    assert _takes(a) == 1
    w.deliver(1, 0.05)
    w.deliver(1, 0.05)
    assert a.active["t0"] == b.active["t0"] > 0


def test_a_preferred_side_whose_take_answers_after_the_backup_stepped_in_stands_by(
        ids: Ids, inits: Inits) -> None:
    """One tunnel, 0.3 s each way. A (preferred) is due 10 s after its key, its KMS answers
    only 1 s later: by then B (backup, due 10.83 s after its own activation, which came 0.3 s
    after A's) has stepped in. A's RekeyInit would cross B's and spend B's key; A keeps its
    key (never announced), answers B's RekeyInit, and uses the key at its next rotation."""
    pols = [TunnelPolicy("t", Mode.QKD_PQC, ("k1",))]
    a, b = make_pair(pols, ids=ids, timers=SOAK)
    w = LaggyWire(a, b, 0.3)
    w.open(0.0)
    now = 0.0
    while not a.active or not b.active:
        now = round(now + STEP_S, 6)
        w.tick(now)
    base = a.node.tunnels["t"].active_at
    assert base is not None
    a.hold_takes = True
    while now < base + 11.0:
        now = round(now + STEP_S, 6)
        w.tick(now)
    assert len(a.held) == 1 and a.node.tunnels["t"].pending is not None
    w.release(a, now)  # A's key arrives inside the backup's window
    a.hold_takes = False
    taken = len(a.taken)
    while now < base + 23.0:
        now = round(now + STEP_S, 6)
        w.tick(now)
    assert _collisions(a, b) == 0 and a.discarded() == b.discarded() == {}
    epochs = [e for _, e in a.activated]
    assert [e % 2 for e in epochs[:3]] == [1, 0, 1]  # A, then B stepping in, then A again
    assert len(a.taken) == taken and a.node.tunnels["t"].spare_ids() == []  # the kept key
    assert a.active["t"] == b.active["t"]
    assert_ids_announced_once(inits)
    check_balance(a, b)
