"""Control-session handshake: authentication, forgeries, unknown peers, replay, downgrade."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.identity import PeerPublicKeys, SiteIdentity
from gateway.protocol import Alarm, Close, InstallKeys, Mode, Output, SessionUp, TunnelPolicy
from gateway.protocol.messages import Finish, FrameType, Hello, HelloReply
from gateway.protocol.wire import FrameSplitter, encode_frame
from tests.protocol.harness import Site, Wire, make_pair

POL = [TunnelPolicy("t1", Mode.QKD_PQC, ("kms1",))]
Ids = tuple[SiteIdentity, SiteIdentity]


def _rewrite(data: bytes, ftype: int, fn: object) -> bytes:
    frames = FrameSplitter().feed(data)
    out = b""
    for f in frames:
        payload = fn(f.payload) if f.type == ftype else f.payload  # type: ignore[operator]
        out += encode_frame(f.type, payload)
    return out


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 0x80]) + b[1:]


def _keep(store: list[bytes], d: bytes) -> bytes:
    store.append(d)
    return d


@pytest.mark.unit
def test_handshake_establishes_and_keys_follow(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()
    assert [x for x in a.actions if isinstance(x, SessionUp)] == [SessionUp("b", 1, True)]
    assert [x for x in b.actions if isinstance(x, SessionUp)] == [SessionUp("a", 1, False)]
    assert a.keys("t1").wg_psk == b.keys("t1").wg_psk
    assert w.closed == []


@pytest.mark.unit
@pytest.mark.parametrize("field", ["ed_sig", "ml_sig"])
def test_forged_responder_signature_is_refused(ids: Ids, field: str) -> None:
    def forge(p: bytes) -> bytes:
        r = HelloReply.decode(p)
        return dataclasses.replace(r, **{field: _flip(getattr(r, field))}).encode()

    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b, tamper=lambda side, d: _rewrite(d, FrameType.HELLO_REPLY, forge)
             if side == "b" else d)
    w.open()
    assert w.closed[0].startswith("a:bad_signature")
    assert a.node.session_conn("b") is None
    assert not any(isinstance(x, InstallKeys) for x in a.actions + b.actions)


@pytest.mark.unit
@pytest.mark.parametrize("field", ["ed_sig", "ml_sig"])
def test_forged_initiator_signature_is_refused(ids: Ids, field: str) -> None:
    def forge(p: bytes) -> bytes:
        f = Finish.decode(p)
        return Finish(_flip(f.ed_sig) if field == "ed_sig" else f.ed_sig,
                      _flip(f.ml_sig) if field == "ml_sig" else f.ml_sig, f.mac).encode()

    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b, tamper=lambda side, d: _rewrite(d, FrameType.FINISH, forge)
             if side == "a" else d)
    w.open()
    assert "b:bad_signature" in [c.split(":")[0] + ":" + c.split(":")[1] for c in w.closed]
    assert b.node.session_conn("a") is None
    assert not any(isinstance(x, InstallKeys) for x in b.actions)


@pytest.mark.unit
def test_one_algorithm_alone_is_not_enough(ids: Ids) -> None:
    """Pinning a different Ed25519 (or ML-DSA) key than the peer holds fails the handshake."""
    other = SiteIdentity.generate().public()
    for swap in ("ed25519", "mldsa65"):
        a, b = make_pair(POL, ids=ids)
        real = ids[1].public()
        pinned = PeerPublicKeys(other.ed25519 if swap == "ed25519" else real.ed25519,
                                other.mldsa65 if swap == "mldsa65" else real.mldsa65)
        pc = a.node.peers["b"]
        a.node.peers["b"] = type(pc)(pc.sae_id, pinned, pc.tunnels)
        w = Wire(a, b)
        w.open()
        assert w.closed and w.closed[0].startswith("a:bad_signature"), swap


@pytest.mark.unit
def test_unknown_peer_is_cut_off_without_affecting_the_others(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()
    stranger = Hello("sae-x", "sae-b", 1, b"n" * 32, b"\x09" * 32,
                     ids[0].public().mldsa65[:1184], 0, bytes(48), b"s" * 64).encode()
    out = b.node.accept(2, 0.1)
    out = b.node.receive(2, encode_frame(FrameType.HELLO, stranger), 0.1)
    assert [type(x).__name__ for x in out.actions] == ["Close"]
    assert "unknown_peer" in out.actions[0].reason  # type: ignore[union-attr]
    assert out.sends == []
    assert b.node.session_conn("a") == 1  # the good peer is untouched


@pytest.mark.unit
def test_impostor_with_a_known_sae_id_but_wrong_keys_fails(ids: Ids) -> None:
    _a, b = make_pair(POL, ids=ids)
    impostor, _ = make_pair(POL, ids=(SiteIdentity.generate(), ids[1]))
    w = Wire(impostor, b)
    w.open()
    assert any(c.startswith("b:bad_signature") for c in w.closed)
    assert b.node.session_conn("a") is None


@pytest.mark.unit
def test_replayed_record_ends_the_session_and_changes_nothing_else(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    seen: list[bytes] = []

    def record(side: str, d: bytes) -> bytes:
        if side == "a":
            seen.append(d)
        return d

    w = Wire(a, b, tamper=record)
    w.open()
    epoch = b.active["t1"]
    record_frame = next(d for d in seen if d[1] == FrameType.RECORD)
    out = b.node.receive(1, record_frame, 0.2)
    assert "bad_record" in out.actions[0].reason  # type: ignore[union-attr]
    assert b.active["t1"] == epoch
    assert not any(isinstance(x, InstallKeys) for x in out.actions)


@pytest.mark.unit
def test_replayed_handshake_cannot_establish_a_session(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    seen: list[bytes] = []
    w = Wire(a, b, tamper=lambda side, d: _keep(seen, d) if side == "a" else d)
    w.open()
    hello = next(d for d in seen if d[1] == FrameType.HELLO)
    finish = next(d for d in seen if d[1] == FrameType.FINISH)
    b.node.accept(7, 1.0)
    out = b.node.receive(7, hello, 1.0)  # not newer than the last Hello from A: refused
    assert "stale_hello" in out.actions[0].reason  # type: ignore[union-attr]
    assert out.sends == [] and out.jobs == []  # no reply, no signature, no encapsulation
    b.node.accept(8, 1.0)
    out = b.node.receive(8, finish, 1.0)  # a Finish without a Hello
    assert "unexpected_message" in out.actions[0].reason  # type: ignore[union-attr]
    assert b.node.session_conn("a") == 1


@pytest.mark.unit
@pytest.mark.parametrize("side", ["a", "b"])
def test_man_in_the_middle_changing_a_policy_digest_breaks_the_signature(ids: Ids,
                                                                         side: str) -> None:
    """The handshake signs each side's policy digest: a middleman who swaps it for the other
    side's (so that each end believes the lists are equal and uses its own, one with a lower
    mode) is caught by the signature checks."""
    lowered = [TunnelPolicy("t1", Mode.ANY, ("kms1",))]
    from gateway.protocol.policy import policy_digest

    def swap(p: bytes) -> bytes:
        m = (Hello if side == "a" else HelloReply).decode(p)
        other = lowered if side == "a" else POL
        return dataclasses.replace(m, policy_digest=policy_digest(other)).encode()

    a, b = make_pair(POL, ids=ids, b_policies=lowered)
    ftype = FrameType.HELLO if side == "a" else FrameType.HELLO_REPLY
    w = Wire(a, b, tamper=lambda s, d: _rewrite(d, ftype, swap) if s == side else d)
    w.open()
    victim = "b" if side == "a" else "a"
    assert w.closed and w.closed[0].startswith(f"{victim}:bad_signature")
    assert not any(isinstance(x, InstallKeys) for x in a.actions + b.actions)


MODES = list(Mode)


def _kms(m: Mode) -> tuple[str, ...]:
    return () if m is Mode.PQC else ("kms1",)


@pytest.mark.fuzz
@settings(max_examples=12, deadline=None)
@given(st.sampled_from(MODES), st.sampled_from(MODES))
def test_a_mode_mismatch_never_yields_keys(ids: Ids, ma: Mode, mb: Mode) -> None:
    if ma is mb:
        return
    a, b = make_pair([TunnelPolicy("t1", ma, _kms(ma))], ids=ids,
                     b_policies=[TunnelPolicy("t1", mb, _kms(mb))])
    w = Wire(a, b)
    w.open()
    for t in (0.5, 1.0, 2.0, 3.5):
        w.tick(t)
    for site in (a, b):
        assert not any(isinstance(x, InstallKeys) for x in site.actions)
        assert any(isinstance(x, Alarm) and x.name == "policy_mismatch" for x in site.actions)


@pytest.mark.unit
@pytest.mark.parametrize("order", ["a_first", "b_first", "interleaved"])
def test_simultaneous_dials_keep_the_same_session_on_both_ends(ids: Ids, order: str) -> None:
    """A dials B on connection 1 while B dials A on connection 2; both handshakes complete."""
    a, b = make_pair(POL, ids=ids)
    queue: list[tuple[Site, int, bytes]] = []
    closed: list[tuple[str, int]] = []

    def absorb(site: Site, out: Output) -> None:
        other = b if site is a else a
        for s in out.sends:
            queue.append((other, s.conn, s.data))
        for act in out.actions:
            if isinstance(act, Close):
                closed.append(("a" if site is a else "b", act.conn))
            ev = site.perform(act)
            if ev is not None:
                absorb(site, site.node.handle(ev, 0.0))

    absorb(b, b.node.accept(1, 0.0))
    absorb(a, a.node.accept(2, 0.0))
    absorb(a, a.node.connect(1, "b", 0.0))
    absorb(b, b.node.connect(2, "a", 0.0))
    if order == "b_first":
        queue.reverse()
    while queue:
        idx = len(queue) // 2 if order == "interleaved" else 0
        # Interleave the connections, never the messages of one (TCP keeps their order).
        idx = next(i for i, q in enumerate(queue) if q[:2] == queue[idx][:2])
        site, conn, data = queue.pop(idx)
        if (("a" if site is a else "b"), conn) in closed:
            continue  # that end already closed the connection
        absorb(site, site.node.receive(conn, data, 0.0))
    ups = [x for s in (a, b) for x in s.actions if isinstance(x, SessionUp)]
    assert {(x.conn, x.initiator) for x in ups} >= {(1, True), (2, True)}  # both completed
    # sae-a < sae-b: the session A dialled (connection 1) survives on both ends
    assert a.node.session_conn("b") == 1 and b.node.session_conn("a") == 1
    assert a.keys("t1").wg_psk == b.keys("t1").wg_psk
