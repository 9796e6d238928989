"""Control-session handshake: one round trip and a half, mutually authenticated, hybrid.

::

    I -> R  Hello       SAE_I, SAE_R, nonce_I, X25519 pub_I, ML-KEM-768 ek_I, policies_I
    R -> I  HelloReply  SAE_R, nonce_R, X25519 pub_R, ML-KEM ct, policies_R,
                        SigEd_R(th_r), SigML_R(th_r), MAC(confirm_r, th_r')
    I -> R  Finish      SigEd_I(th_i), SigML_I(th_i), MAC(confirm_i, th_i')

th_* are SHA-384 over the length-prefixed messages so far (th_r: Hello || reply body; th_r' adds
R's signatures; th_i: Hello || whole reply; th_i' adds I's signatures). Each side signs with BOTH
Ed25519 and ML-DSA-65 under a role-specific context, and the peer must verify both against the
keys pinned for the claimed SAE ID. Session keys come from ML-KEM-768 + X25519 ephemerals only
(HKDF-SHA-384 over ss_MLKEM || ss_X25519, info = label || th_r); the MACs confirm that both
derived them. Both policy lists are inside the signatures: nobody can lower a peer's mode.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from gateway.identity import PeerPublicKeys, SiteIdentity
from gateway.keymaterial import Secret
from gateway.protocol import labels
from gateway.protocol.channel import Channel
from gateway.protocol.constants import NONCE_LEN
from gateway.protocol.errors import AuthError, BadMac, BadSignature, UnknownPeer
from gateway.protocol.messages import Finish, Hello, HelloReply
from gateway.protocol.policy import TunnelPolicy
from gateway.protocol.wire import Writer

__all__ = ["Established", "InitiatorHandshake", "ResponderHandshake"]

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


@dataclass(frozen=True, slots=True)
class Established:
    """Result of a completed handshake."""

    peer_sae: str
    initiator: bool
    channel: Channel
    remote_policies: tuple[TunnelPolicy, ...]


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
        prk = hmac.new(labels.SESSION_SALT, ss_mlkem + ss_x25519, hashlib.sha384).digest()

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


class InitiatorHandshake:
    """The dialling side. Call :meth:`hello`, then :meth:`on_reply`."""

    def __init__(
        self,
        identity: SiteIdentity,
        local_sae: str,
        peer_sae: str,
        peer_keys: PeerPublicKeys,
        policies: tuple[TunnelPolicy, ...],
    ) -> None:
        self._identity, self._peer_sae, self._peer_keys = identity, peer_sae, peer_keys
        self._x = x25519.X25519PrivateKey.generate()
        self._kem = mlkem.MLKEM768PrivateKey.generate()
        self._hello = Hello(
            local_sae,
            peer_sae,
            os.urandom(NONCE_LEN),
            self._x.public_key().public_bytes(*_RAW),
            self._kem.public_key().public_bytes(*_RAW),
            policies,
        ).encode()

    @property
    def hello(self) -> bytes:
        return self._hello

    def on_reply(self, payload: bytes) -> tuple[bytes, Established]:
        """Verify the reply; return (Finish payload, session)."""
        reply = HelloReply.decode(payload)
        if reply.responder_sae != self._peer_sae:
            raise UnknownPeer(f"responder says it is {reply.responder_sae!r}, expected "
                              f"{self._peer_sae!r}")
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
            self._peer_sae, True, channel, reply.policies
        )


PeerLookup = Callable[[str], tuple[PeerPublicKeys, tuple[TunnelPolicy, ...]] | None]


class ResponderHandshake:
    """The listening side. Call :meth:`on_hello`, then :meth:`on_finish`.

    ``lookup(sae_id)`` returns the pinned keys and our policies for that peer, or None.
    """

    def __init__(self, identity: SiteIdentity, local_sae: str, lookup: PeerLookup) -> None:
        self._identity, self._local_sae, self._lookup = identity, local_sae, lookup
        self._state: tuple[str, PeerPublicKeys, bytes, bytes, _Keys, HelloReply] | None = None
        self._hello_policies: tuple[TunnelPolicy, ...] = ()

    @property
    def peer_sae(self) -> str | None:
        return self._state[0] if self._state else None

    def on_hello(self, payload: bytes) -> bytes:
        hello = Hello.decode(payload)
        if hello.responder_sae != self._local_sae:
            raise UnknownPeer(f"hello addressed to {hello.responder_sae!r}, this is "
                              f"{self._local_sae!r}")
        found = self._lookup(hello.initiator_sae)
        if found is None:
            raise UnknownPeer(f"no pinned peer with SAE ID {hello.initiator_sae!r}")
        keys_pub, policies = found
        try:
            ek = mlkem.MLKEM768PublicKey.from_public_bytes(hello.mlkem_ek)
            ss_kem, ct = ek.encapsulate()
        except ValueError:
            raise AuthError("ML-KEM encapsulation key rejected") from None
        x = x25519.X25519PrivateKey.generate()
        ss_x = _x25519_shared(x, hello.x25519)
        reply = HelloReply(self._local_sae, os.urandom(NONCE_LEN),
                           x.public_key().public_bytes(*_RAW), ct, policies)
        body = reply.body()
        th_r = _th(payload, body)
        keys = _Keys(ss_kem, ss_x, th_r)
        ed, ml = self._identity.sign(th_r, labels.CTX_SIGN_RESPONDER)
        mac = _mac(keys.confirm_r, _th(payload, body, ed, ml))
        full = HelloReply(reply.responder_sae, reply.nonce, reply.x25519, ct, policies, ed, ml, mac)
        encoded = full.encode()
        self._state = (hello.initiator_sae, keys_pub, payload, encoded, keys, full)
        self._hello_policies = hello.policies
        return encoded

    def on_finish(self, payload: bytes) -> Established:
        if self._state is None:
            raise AuthError("finish before hello")
        peer_sae, keys_pub, hello, reply, keys, _ = self._state
        fin = Finish.decode(payload)
        th_i = _th(hello, reply)
        if not keys_pub.verify(th_i, fin.ed_sig, fin.ml_sig, labels.CTX_SIGN_INITIATOR):
            raise BadSignature(f"initiator {peer_sae!r}: handshake signature invalid")
        if not hmac.compare_digest(fin.mac, _mac(keys.confirm_i, _th(hello, reply, fin.ed_sig,
                                                                     fin.ml_sig))):
            raise BadMac(f"initiator {peer_sae!r}: key confirmation failed")
        channel = Channel(keys.r2i, keys.i2r, initiator=False)
        return Established(peer_sae, False, channel, self._hello_policies)
