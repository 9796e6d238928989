"""Control-session handshake: one round trip and a half, mutually authenticated, hybrid.

::

    I -> R  Hello       SAE_I, SAE_R, timestamp, nonce_I, X25519 pub_I, ML-KEM-768 ek_I,
                        |policies_I|, H(policies_I), SigEd_I(hello)
    R -> I  HelloReply  SAE_R, nonce_R, X25519 pub_R, ML-KEM ct, |policies_R|, H(policies_R),
                        SigEd_R(th_r), SigML_R(th_r), MAC(confirm_r, th_r')
    I -> R  Finish      SigEd_I(th_i), SigML_I(th_i), MAC(confirm_i, th_i')

th_* are SHA-384 over the length-prefixed messages so far (th_r: Hello || reply body; th_r' adds
R's signatures; th_i: Hello || whole reply; th_i' adds I's signatures). Each side signs with BOTH
Ed25519 and ML-DSA-65 under a role-specific context, and the peer must verify both against the
keys pinned for the claimed SAE ID. Session keys come from ML-KEM-768 + X25519 ephemerals only
(two cascaded HKDF-Extracts, info = label || th_r); the MACs confirm that both derived them.
Both policy digests are inside the signatures: nobody can lower a peer's mode.

Before any expensive work the responder checks the Hello cheaply (:class:`HelloGuard`): it names
a pinned peer, its timestamp is within HELLO_MAX_SKEW of our wall clock and newer than the last
Hello accepted from that peer (so a replay is refused at the cost of a dictionary lookup), and
its Ed25519 signature verifies (~100 us). The expensive parts (responder: ML-KEM encapsulation,
X25519, both signatures; initiator: both verifications, decapsulation, both signatures) are
returned as pure closures the node may run in a worker thread (see jobs.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from gateway.identity import PeerPublicKeys, SiteIdentity
from gateway.keymaterial import Secret
from gateway.protocol import labels
from gateway.protocol.channel import Channel
from gateway.protocol.combiner import extract_chain
from gateway.protocol.constants import HELLO_MAX_SKEW, NONCE_LEN
from gateway.protocol.errors import AuthError, BadMac, BadSignature, StaleHello, UnknownPeer
from gateway.protocol.messages import Finish, Hello, HelloReply
from gateway.protocol.wire import Writer

__all__ = ["Established", "HelloGuard", "InitiatorHandshake", "PeerInfo", "ResponderHandshake"]

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


@dataclass(frozen=True, slots=True)
class Established:
    """Result of a completed handshake."""

    peer_sae: str
    initiator: bool
    channel: Channel
    remote_count: int
    remote_digest: bytes
    local_digest: bytes  # the digest of our own list that this handshake signed
    peer_keys: PeerPublicKeys  # the pinned keys the peer was authenticated with


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What a responder needs about a pinned peer: its keys and our policy list's summary."""

    keys: PeerPublicKeys
    policy_count: int
    policy_digest: bytes


def _th(*parts: bytes) -> bytes:
    w = Writer().blob(labels.TRANSCRIPT_SESSION)
    for p in parts:
        w.blob(p)
    return hashlib.sha384(w.bytes()).digest()


def _mac(key: Secret, th: bytes) -> bytes:
    return hmac.new(key.reveal(), th, hashlib.sha384).digest()


class _Keys:
    __slots__ = ("confirm_i", "confirm_r", "i2r", "r2i")

    def __init__(self, ss_mlkem: bytes, ss_x25519: bytes, th: bytes) -> None:
        prk = extract_chain(labels.SESSION_SALT, [ss_mlkem, ss_x25519])

        def expand(label: bytes, n: int) -> Secret:
            return Secret(HKDFExpand(hashes.SHA384(), n, label + th).derive(prk))

        self.i2r = expand(labels.SESSION_TRAFFIC_I2R, 32)
        self.r2i = expand(labels.SESSION_TRAFFIC_R2I, 32)
        self.confirm_i = expand(labels.SESSION_CONFIRM_I, 48)
        self.confirm_r = expand(labels.SESSION_CONFIRM_R, 48)


def _x25519_shared(priv: x25519.X25519PrivateKey, peer_pub: bytes) -> bytes:
    try:
        return priv.exchange(x25519.X25519PublicKey.from_public_bytes(peer_pub))
    except ValueError:
        # All-zero output (small-order point): refuse rather than derive from a known value.
        raise AuthError("peer sent a degenerate X25519 public key") from None


class HelloGuard:
    """Freshness of Hellos per initiator SAE ID, as WireGuard's TAI64N rule: a Hello must be
    newer than the last one accepted from that peer and, when the wall clock is known, within
    HELLO_MAX_SKEW of it. Memory: one integer per pinned peer."""

    __slots__ = ("_last", "_verifiers")

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._verifiers: dict[bytes, ed25519.Ed25519PublicKey] = {}

    def check(self, hello: Hello, keys: PeerPublicKeys, wall: float | None) -> None:
        """Raise StaleHello/BadSignature, or record the Hello as the newest from its sender."""
        if wall is not None and abs(hello.timestamp / 1e6 - wall) > HELLO_MAX_SKEW:
            raise StaleHello(f"hello from {hello.initiator_sae!r} is dated "
                             f"{hello.timestamp / 1e6 - wall:+.0f} s from this clock (limit "
                             f"{HELLO_MAX_SKEW:g} s): check NTP on both gateways")
        if hello.timestamp <= self._last.get(hello.initiator_sae, -1):
            raise StaleHello(f"hello from {hello.initiator_sae!r} is not newer than the last "
                             "one accepted (a replay)")
        verifier = self._verifiers.get(keys.ed25519)
        if verifier is None:
            verifier = self._verifiers[keys.ed25519] = (
                ed25519.Ed25519PublicKey.from_public_bytes(keys.ed25519))
        try:
            verifier.verify(hello.signature, labels.CTX_SIGN_HELLO + hello.signed_part())
        except InvalidSignature:
            raise BadSignature(f"hello claiming {hello.initiator_sae!r}: signature "
                               "invalid") from None
        self._last[hello.initiator_sae] = hello.timestamp


class InitiatorHandshake:
    """The dialling side: :attr:`hello` to send, then :meth:`on_reply` for the answer."""

    def __init__(self, identity: SiteIdentity, local_sae: str, peer_sae: str,
                 peer_keys: PeerPublicKeys, policy_count: int, policy_digest: bytes,
                 timestamp: int) -> None:
        self._identity, self._peer_sae, self._peer_keys = identity, peer_sae, peer_keys
        self._digest = policy_digest
        self._x = x25519.X25519PrivateKey.generate()
        self._kem = mlkem.MLKEM768PrivateKey.generate()
        unsigned = Hello(local_sae, peer_sae, timestamp, os.urandom(NONCE_LEN),
                         self._x.public_key().public_bytes(*_RAW),
                         self._kem.public_key().public_bytes(*_RAW), policy_count, policy_digest)
        sig = identity.ed25519.sign(labels.CTX_SIGN_HELLO + unsigned.signed_part())
        self._hello = dataclasses.replace(unsigned, signature=sig).encode()

    @property
    def hello(self) -> bytes:
        return self._hello

    def on_reply(self, payload: bytes) -> Callable[[], tuple[bytes, Established]]:
        """Decode the reply now; return the expensive rest (verify, decapsulate, sign) as a pure
        closure returning (Finish payload, session) or raising a ProtocolError."""
        reply = HelloReply.decode(payload)
        if reply.responder_sae != self._peer_sae:
            raise UnknownPeer(f"responder says it is {reply.responder_sae!r}, expected "
                              f"{self._peer_sae!r}")
        return lambda: self._finish(reply, payload)

    def _finish(self, reply: HelloReply, payload: bytes) -> tuple[bytes, Established]:
        body = reply.body()
        th_r = _th(self._hello, body)
        if not self._peer_keys.verify(th_r, reply.ed_sig, reply.ml_sig, labels.CTX_SIGN_RESPONDER):
            raise BadSignature(f"responder {self._peer_sae!r}: handshake signature invalid")
        try:
            ss_kem = self._kem.decapsulate(reply.mlkem_ct)
        except ValueError:
            raise AuthError("ML-KEM ciphertext rejected") from None
        keys = _Keys(ss_kem, _x25519_shared(self._x, reply.x25519), th_r)
        if not hmac.compare_digest(
            reply.mac, _mac(keys.confirm_r, _th(self._hello, body, reply.ed_sig, reply.ml_sig))
        ):
            raise BadMac(f"responder {self._peer_sae!r}: key confirmation failed")
        th_i = _th(self._hello, payload)
        ed, ml = self._identity.sign(th_i, labels.CTX_SIGN_INITIATOR)
        mac = _mac(keys.confirm_i, _th(self._hello, payload, ed, ml))
        channel = Channel(keys.i2r, keys.r2i, initiator=True)
        return Finish(ed, ml, mac).encode(), Established(
            self._peer_sae, True, channel, reply.policy_count, reply.policy_digest, self._digest,
            self._peer_keys)


PeerLookup = Callable[[str], PeerInfo | None]


@dataclass(frozen=True, slots=True)
class _Pending:
    peer_sae: str
    keys_pub: PeerPublicKeys
    hello: bytes
    reply: bytes
    keys: _Keys
    remote_count: int
    remote_digest: bytes
    local_digest: bytes


class ResponderHandshake:
    """The listening side: :meth:`on_hello` (cheap checks, then the expensive part as a closure
    whose result goes to :meth:`replied`), then :meth:`on_finish`.

    ``lookup(sae_id)`` returns the pinned keys and our policy summary for that peer, or None.
    """

    def __init__(self, identity: SiteIdentity, local_sae: str, lookup: PeerLookup,
                 guard: HelloGuard) -> None:
        self._identity, self._local_sae, self._lookup = identity, local_sae, lookup
        self._guard = guard
        self._state: _Pending | None = None
        self.hello_seen = False

    @property
    def peer_sae(self) -> str | None:
        return self._state.peer_sae if self._state else None

    def on_hello(self, payload: bytes, wall: float | None) -> Callable[[], _Pending]:
        """Cheap checks (raise before any expensive work); return the expensive rest."""
        self.hello_seen = True
        hello = Hello.decode(payload)
        if hello.responder_sae != self._local_sae:
            raise UnknownPeer(f"hello addressed to {hello.responder_sae!r}, this is "
                              f"{self._local_sae!r}")
        found = self._lookup(hello.initiator_sae)
        if found is None:
            raise UnknownPeer(f"no pinned peer with SAE ID {hello.initiator_sae!r}")
        self._guard.check(hello, found.keys, wall)
        return lambda: self._reply(hello, payload, found)

    def _reply(self, hello: Hello, payload: bytes, found: PeerInfo) -> _Pending:
        try:
            ek = mlkem.MLKEM768PublicKey.from_public_bytes(hello.mlkem_ek)
            ss_kem, ct = ek.encapsulate()
        except ValueError:
            raise AuthError("ML-KEM encapsulation key rejected") from None
        x = x25519.X25519PrivateKey.generate()
        ss_x = _x25519_shared(x, hello.x25519)
        reply = HelloReply(self._local_sae, os.urandom(NONCE_LEN),
                           x.public_key().public_bytes(*_RAW), ct, found.policy_count,
                           found.policy_digest)
        body = reply.body()
        th_r = _th(payload, body)
        keys = _Keys(ss_kem, ss_x, th_r)
        ed, ml = self._identity.sign(th_r, labels.CTX_SIGN_RESPONDER)
        mac = _mac(keys.confirm_r, _th(payload, body, ed, ml))
        full = HelloReply(reply.responder_sae, reply.nonce, reply.x25519, ct, reply.policy_count,
                          reply.policy_digest, ed, ml, mac)
        return _Pending(hello.initiator_sae, found.keys, payload, full.encode(), keys,
                        hello.policy_count, hello.policy_digest, found.policy_digest)

    def replied(self, state: object) -> bytes:
        """The expensive part is done: remember its state, return the reply to send."""
        assert isinstance(state, _Pending)
        self._state = state
        return state.reply

    def on_finish(self, payload: bytes) -> Established:
        if self._state is None:
            raise AuthError("finish before hello")
        st = self._state
        fin = Finish.decode(payload)
        th_i = _th(st.hello, st.reply)
        if not st.keys_pub.verify(th_i, fin.ed_sig, fin.ml_sig, labels.CTX_SIGN_INITIATOR):
            raise BadSignature(f"initiator {st.peer_sae!r}: handshake signature invalid")
        if not hmac.compare_digest(fin.mac, _mac(st.keys.confirm_i, _th(st.hello, st.reply,
                                                                         fin.ed_sig, fin.ml_sig))):
            raise BadMac(f"initiator {st.peer_sae!r}: key confirmation failed")
        channel = Channel(st.keys.r2i, st.keys.i2r, initiator=False)
        return Established(st.peer_sae, False, channel, st.remote_count, st.remote_digest,
                           st.local_digest, st.keys_pub)
