"""The rekey ephemerals a burst shares (gateway.protocol.ephemeral): their bounds, and a burst of
exchanges between two Nodes in memory that shares them and still gives every tunnel its own keys."""

from __future__ import annotations

import gc
import weakref

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from gateway.identity import SiteIdentity
from gateway.protocol import Mode, TunnelPolicy
from gateway.protocol.ephemeral import (
    SHARE_MAX_USES,
    SHARE_WINDOW_S,
    EphemeralPair,
    Ephemerals,
)
from gateway.protocol.exchange import Exchange, Sink
from gateway.protocol.inner import RekeyInit, RekeyResp
from gateway.protocol.rekey import Tunnel
from tests.protocol.harness import FAST, Site, Wire, make_pair

pytestmark = pytest.mark.unit
Ids = tuple[SiteIdentity, SiteIdentity]
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _public() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes(*_RAW)


def test_a_pair_serves_a_burst_within_its_window_and_its_count() -> None:
    e = Ephemerals()
    first = e.initiator("t0", 10.0)
    assert e.initiator("t1", 10.0 + SHARE_WINDOW_S * 0.99) is first
    assert e.initiator("t2", 10.0 + SHARE_WINDOW_S) is not first  # too old for a new exchange
    e = Ephemerals()
    held = [e.initiator(f"t{i}", 0.0) for i in range(SHARE_MAX_USES + 1)]
    assert all(p is held[0] for p in held[:SHARE_MAX_USES])
    assert held[SHARE_MAX_USES] is not held[0]


def test_a_tunnel_never_uses_one_pair_twice() -> None:
    e = Ephemerals()
    first = e.initiator("t", 0.0)
    retry = e.initiator("t", 0.1)  # e.g. an aborted exchange retried at once
    assert retry is not first and retry.x_pub != first.x_pub
    answer = e.responder("t", 0.1)
    assert answer is not first and answer is not retry  # roles never share a pair
    assert e.responder("u", 0.2) is answer


def test_pairs_are_held_only_by_the_exchanges_using_them() -> None:
    e = Ephemerals()
    pair = e.initiator("t", 0.0)
    gone = weakref.ref(pair)
    del pair
    gc.collect()
    assert gone() is None  # the private keys are gone with the last exchange holding them
    fresh = e.initiator("u", 0.1)
    assert fresh.born == 0.1


def test_the_x25519_secret_is_computed_once_per_peer_key_and_never_for_a_bad_one() -> None:
    pair = EphemeralPair(0.0)
    peer = x25519.X25519PrivateKey.generate()
    peer_pub = peer.public_key().public_bytes(*_RAW)
    ss = pair.exchange(peer_pub)
    assert pair.exchange(peer_pub) is ss
    direct = peer.exchange(x25519.X25519PublicKey.from_public_bytes(pair.x_pub))
    assert ss.reveal() == direct
    with pytest.raises(ValueError):
        pair.exchange(bytes(32))  # low order: an all-zero secret
    with pytest.raises(ValueError):
        pair.exchange(b"short")
    for _ in range(SHARE_MAX_USES + 5):  # whatever a peer sends, the cache stays bounded
        pair.exchange(_public())
    assert len(pair._dh) == SHARE_MAX_USES


def test_each_encapsulation_has_its_own_secret_and_a_new_ek_is_parsed_again() -> None:
    e, one, two = Ephemerals(), EphemeralPair(0.0), EphemeralPair(0.0)
    with pytest.raises(ValueError):
        one.decapsulate(bytes(1088))  # no ek was offered: nothing to decapsulate with
    ss1, ct1 = e.encapsulate(one.ek())
    ss2, ct2 = e.encapsulate(one.ek())
    assert ss1 != ss2 and ct1 != ct2
    assert one.decapsulate(ct1) == ss1 and one.decapsulate(ct2) == ss2
    ss3, ct3 = e.encapsulate(two.ek())
    assert two.decapsulate(ct3) == ss3
    with pytest.raises(ValueError):
        e.encapsulate(b"\x00" * 10)
    for obj in (one, two, e):
        for secret in (ss1, ss2, ss3):
            assert secret.reveal().hex() not in repr(obj)


def test_a_burst_shares_the_ephemerals_and_every_tunnel_gets_its_own_keys(
        ids: Ids, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty tunnels due at once: one pair per side for the burst, the exchanges complete with
    equal keys at both ends, every tunnel's keys differ, and no pair outlives the burst."""
    names = [f"t{i:02d}" for i in range(20)]
    a, b = make_pair([TunnelPolicy(n, Mode.QKD_PQC, ("k1",)) for n in names], ids=ids)
    sent: list[RekeyInit | RekeyResp] = []
    send_init, respond = Tunnel._send_init, Tunnel._respond

    def spy_init(self: Tunnel, p: Exchange, now: float, sink: Sink) -> None:
        send_init(self, p, now, sink)
        assert p.init is not None
        sent.append(p.init)

    def spy_respond(self: Tunnel, p: Exchange, now: float, sink: Sink) -> None:
        respond(self, p, now, sink)
        assert p.resp is not None
        sent.append(p.resp)

    monkeypatch.setattr(Tunnel, "_send_init", spy_init)
    monkeypatch.setattr(Tunnel, "_respond", spy_respond)
    w = Wire(a, b)
    w.open()  # the session starts: every tunnel's first rekey, in one burst
    inits = [m for m in sent if isinstance(m, RekeyInit)]
    resps = [m for m in sent if isinstance(m, RekeyResp)]
    assert sorted(m.tunnel for m in inits) == names and len(resps) == len(names)
    assert len({m.mlkem_ek for m in inits}) == 1 and len({m.x25519 for m in inits}) == 1
    assert len({m.x25519 for m in resps}) == 1
    assert len({m.mlkem_ct for m in resps}) == len(names)  # one encapsulation each
    assert len({m.nonce for m in sent}) == len(sent)
    for site in (a, b):
        assert sorted(site.active) == names
    psks = {a.keys(n).wg_psk.reveal() for n in names}
    assert len(psks) == len(names)
    for n in names:
        assert a.keys(n).wg_psk == b.keys(n).wg_psk
    _assert_no_pair_alive(a, b)
    # The next burst (every tunnel due again) makes new pairs: the previous ones are gone.
    sent.clear()
    w.tick(FAST.rekey_after_backup + 0.01)
    again = [m for m in sent if isinstance(m, RekeyInit)]
    assert sorted(m.tunnel for m in again) == names
    assert len({m.x25519 for m in again}) == 1 and again[0].x25519 != inits[0].x25519
    _assert_no_pair_alive(a, b)


def _assert_no_pair_alive(*sites: Site) -> None:
    # No gc.collect(): reference counting alone must free them (a cycle would keep the private
    # keys until some later collection).
    for site in sites:
        for t in site.node.tunnels.values():
            assert t.pending is None
        for eph in site.node._ephemerals.values():
            assert eph._initiator is None or eph._initiator() is None
            assert eph._responder is None or eph._responder() is None


def test_tunnels_with_and_without_ml_kem_share_a_burst(ids: Ids) -> None:
    """A burst of ``qkd`` (no ML-KEM) and ``qkd+pqc`` tunnels towards one peer: the ML-KEM key
    is made once for those that want it, the others send no ek, all end with equal keys."""
    modes = [Mode.QKD if i % 2 else Mode.QKD_PQC for i in range(10)]
    pols = [TunnelPolicy(f"t{i}", m, ("k1",)) for i, m in enumerate(modes)]
    a, b = make_pair(pols, ids=ids)
    w = Wire(a, b)
    w.open()
    for p in pols:
        ka, kb = a.keys(p.name), b.keys(p.name)
        assert ka.wg_psk == kb.wg_psk
        assert ("ml-kem-768" in ka.achieved) is (p.mode is Mode.QKD_PQC)
    assert len({a.keys(p.name).wg_psk.reveal() for p in pols}) == len(pols)
    _assert_no_pair_alive(a, b)
