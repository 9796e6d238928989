"""Issue 12's scale (10,000 tunnels between two gateways) and issue 10's live reload, in memory.

* The handshake carries digests only; differing lists travel in bounded records afterwards and no
  tunnel is usable before both lists are known and reconciled.
* Timers live in a heap: a tick touches only what is due, whatever the number of tunnels.
* At most MAX_CONCURRENT_EXCHANGES of our exchanges run per peer; the rest wait their turn.
* ``reconfigure``: unchanged tunnels untouched, added ones come up, removed ones retire their
  keys, changed ones are re-announced and rekeyed once both ends agree. ``rekey_now``.
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.identity import SiteIdentity
from gateway.protocol import (
    Activate,
    Alarm,
    InstallKeys,
    Mode,
    PeerConfig,
    PolicyError,
    Retire,
    TakeQkdKeys,
    TunnelPolicy,
)
from gateway.protocol.constants import MAX_CONCURRENT_EXCHANGES, MAX_FRAME
from gateway.protocol.messages import FrameType
from gateway.protocol.rekey import Tunnel
from tests.protocol.harness import FAST, Site, Wire, make_pair

pytestmark = pytest.mark.unit
Ids = tuple[SiteIdentity, SiteIdentity]
# Long timers: nothing fires on its own during these tests unless a test moves the clock.
SLOW = dataclasses.replace(FAST, rekey_after=100.0, rekey_after_backup=110.0,
                           reject_after=300.0, keepalive_interval=50.0, dead_after=200.0)


def _tunnels(n: int, mode: Mode = Mode.PQC) -> list[TunnelPolicy]:
    return [TunnelPolicy(f"tunnel-{i:05d}", mode) for i in range(n)]


def _restore_all(site: Site, epoch: int = 1) -> None:
    """As after a daemon restart with every key still valid: no rekey due at session start."""
    for name in site.node.tunnels:
        site.node.restore_epoch(name, epoch, age=0.0, now=0.0)


def test_ten_thousand_tunnels_with_differing_lists(ids: Ids) -> None:
    pols = _tunnels(10_000)
    theirs = [*pols[:-1], TunnelPolicy(pols[-1].name, Mode.QKD, ("k1",))]  # one differs
    a, b = make_pair(pols, ids=ids, timers=SLOW, b_policies=theirs)
    _restore_all(a)
    _restore_all(b)
    frames: list[bytes] = []
    w = Wire(a, b, tamper=lambda side, d: frames.append(d) or d)  # type: ignore[func-returns-value]
    w._absorb(b, b.node.accept(1, 0.0), 0.0)
    w._absorb(a, a.node.connect(1, "b", 0.0), 0.0)
    # Deliver the three handshake messages only: sessions are up, lists not yet exchanged.
    for _ in range(3):
        site, data = w.queue.pop(0)
        w._absorb(site, site.node.receive(1, data, 0.0), 0.0)
    assert a.node.session_conn("b") == 1 and b.node.session_conn("a") == 1
    assert not any(a.node.tunnel_status(p.name).session_up for p in pols[:50])
    w.run(0.0)
    for site in (a, b):
        up = sum(site.node.tunnel_status(p.name).session_up for p in pols)
        assert up == 9_999
        alarms = [x for x in site.actions if isinstance(x, Alarm) and x.name == "policy_mismatch"]
        assert [x.tunnel for x in alarms] == [pols[-1].name]
    hs = [f for f in frames if f[1] in (FrameType.HELLO, FrameType.HELLO_REPLY)]
    assert all(len(f) < 5_000 for f in hs)  # independent of the tunnel count
    records = [f for f in frames if f[1] == FrameType.RECORD]
    # ~17 bytes a policy: each list is ~170 KB, cut into 12 KiB records (14 per side)
    assert len(records) >= 2 * 13 and max(map(len, records)) <= MAX_FRAME


def test_equal_lists_are_not_sent_at_all(ids: Ids) -> None:
    pols = _tunnels(2_000)
    a, b = make_pair(pols, ids=ids, timers=SLOW)
    _restore_all(a)
    _restore_all(b)
    frames: list[bytes] = []
    w = Wire(a, b, tamper=lambda side, d: frames.append(d) or d)  # type: ignore[func-returns-value]
    w.open()
    assert sum(f[1] == FrameType.RECORD for f in frames) <= 2  # at most a keepalive each way
    assert all(b.node.tunnel_status(p.name).session_up for p in pols)


def test_an_idle_tick_touches_no_tunnel(ids: Ids, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = make_pair(_tunnels(10_000), ids=ids, timers=SLOW)
    _restore_all(a)
    _restore_all(b)
    Wire(a, b).open()
    calls = 0
    real = Tunnel.tick

    def counting(self: Tunnel, *args: object) -> None:
        nonlocal calls
        calls += 1
        real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Tunnel, "tick", counting)
    deadline = a.node.next_deadline()
    assert deadline is not None and deadline > 1.0
    a.node.tick(1.0)  # nothing due: nothing looked at
    assert calls == 0
    out = a.node.tick(SLOW.rekey_after)  # every tunnel is due now: each ticked once
    assert calls == 10_000
    takes = [x for x in out.actions if isinstance(x, TakeQkdKeys)]
    assert not takes  # PQC tunnels take no QKD keys ...
    inits = [x for x in out.sends if 1184 < len(x.data) < 1500]  # RekeyInit: an ML-KEM ek
    assert len(inits) == MAX_CONCURRENT_EXCHANGES  # ... and 64 RekeyInits go out at once


def test_exchanges_per_peer_are_capped_and_the_rest_wait_their_turn(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy(f"t{i:03d}", Mode.QKD_PQC, ("k1",)) for i in range(300)],
                     ids=ids, timers=SLOW)
    b.auto_install = False  # exchanges hang at B's install
    w = Wire(a, b)
    w.open()
    takes = [x for x in a.actions if isinstance(x, TakeQkdKeys)]
    assert len(takes) == MAX_CONCURRENT_EXCHANGES
    b.auto_install = True
    w.tick(SLOW.rekey_timeout + 0.01)  # the hung ones time out; the next 64 start ...
    w.tick(SLOW.rekey_timeout + 0.2)  # ... and retries come back later
    for i in range(60):
        w.tick(SLOW.rekey_timeout + 0.3 + i * 0.3)
    assert all(name in a.active for name in a.node.tunnels)
    assert all(a.keys(n).wg_psk == b.keys(n).wg_psk for n in a.node.tunnels)


# -- live reload --------------------------------------------------------------------------------

def _peer(site: Site, tunnels: list[TunnelPolicy]) -> dict[str, PeerConfig]:
    (name, pc), = site.node.peers.items()
    return {name: PeerConfig(pc.sae_id, pc.keys, tuple(tunnels))}


def test_reconfigure_applies_only_the_difference(ids: Ids) -> None:
    keep = [TunnelPolicy(f"keep{i}", Mode.QKD_PQC, ("k1",)) for i in range(3)]
    change, drop = TunnelPolicy("change", Mode.QKD_PQC, ("k1",)), TunnelPolicy("drop", Mode.PQC)
    a, b = make_pair([*keep, change, drop], ids=ids)
    w = Wire(a, b)
    w.open()
    before = {n: (a.active[n], a.keys(n).wg_psk) for n in ("keep0", "keep1", "keep2", "change")}
    dropped_epoch = a.active["drop"]
    new = [*keep, TunnelPolicy("change", Mode.PQC), TunnelPolicy("added", Mode.PQC)]
    n_actions = len(a.actions)
    w._absorb(a, a.node.reconfigure(_peer(a, new), 0.1), 0.1)
    w.run(0.1)
    fresh = a.actions[n_actions:]
    # removed: its keys are retired; unchanged: no action at all
    assert Retire("drop", dropped_epoch) in fresh
    assert not any(getattr(x, "tunnel", None) in ("keep0", "keep1", "keep2") for x in fresh)
    # changed at A only: B disables it (A announced it), with an alarm; A keeps its old key
    assert any(isinstance(x, Alarm) and x.name == "policy_mismatch" and x.tunnel == "change"
               for x in b.actions)
    assert not b.node.tunnel_status("change").session_up
    # B reloads the same file: the changed tunnel is rekeyed under the new policy at once
    w._absorb(b, b.node.reconfigure(_peer(b, new), 0.2), 0.2)
    w.run(0.2)
    w.tick(0.25)
    w.tick(0.6)  # the non-preferred side's stand-by is one keepalive interval (0.5 s)
    assert a.active["change"] == b.active["change"] > before["change"][0]
    assert a.keys("change").achieved == ("ml-kem-768", "x25519")
    assert a.keys("added").wg_psk == b.keys("added").wg_psk
    for n in ("keep0", "keep1", "keep2"):  # untouched: same epoch, same key
        assert (a.active[n], a.keys(n).wg_psk) == before[n]
        assert (b.active[n], b.keys(n).wg_psk) == before[n]


def test_an_inconsistent_reconfiguration_changes_nothing(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.PQC)], ids=ids)
    Wire(a, b).open()
    (name, pc), = a.node.peers.items()
    twice = {name: pc, "other": PeerConfig(pc.sae_id, pc.keys, ())}  # two peers, one SAE ID
    with pytest.raises(PolicyError):
        a.node.reconfigure(twice, 0.1)
    assert list(a.node.peers) == [name] and a.node.tunnel_status("t").session_up


def test_a_peer_with_new_keys_gets_a_new_session(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.PQC)], ids=ids)
    Wire(a, b).open()
    (name, pc), = a.node.peers.items()
    out = a.node.reconfigure({name: PeerConfig(pc.sae_id, SiteIdentity.generate().public(),
                                               pc.tunnels)}, 0.1)
    assert [x.reason for x in out.actions if hasattr(x, "reason") and hasattr(x, "conn")] == [
        "peer_reconfigured"]
    assert a.node.session_conn(name) is None
    assert a.active["t"] == a.node.tunnel_status("t").active_epoch  # keys are kept meanwhile


def test_rekey_now(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.PQC), TunnelPolicy("u", Mode.PQC)], ids=ids,
                     b_policies=[TunnelPolicy("t", Mode.PQC)])
    w = Wire(a, b)
    w.open()
    first = b.active["t"]
    w._absorb(b, b.node.rekey_now("t", 0.1), 0.1)  # the non-preferred side may force it too
    w.run(0.1)
    assert a.active["t"] == b.active["t"] > first
    with pytest.raises(ValueError, match="no tunnel 'nope'"):
        a.node.rekey_now("nope", 0.1)
    with pytest.raises(ValueError, match="configure it differently"):
        a.node.rekey_now("u", 0.1)  # B has no tunnel u
    assert not [x for x in a.actions if isinstance(x, InstallKeys) and x.tunnel == "u"]
    assert [x.epoch for x in a.actions if isinstance(x, Activate) and x.tunnel == "t"] == [
        1, b.active["t"]]
