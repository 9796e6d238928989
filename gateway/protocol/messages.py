"""Frame types and the handshake messages (documented in docs/protocol.md).

Handshake messages travel in plaintext frames; everything after the handshake is an inner message
inside an encrypted record (see inner.py and channel.py). Decoders raise WireError on anything
malformed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.identity import ED25519_SIGNATURE_LEN, MLDSA65_SIGNATURE_LEN
from gateway.protocol.constants import MAX_TUNNELS_PER_PEER, NONCE_LEN, SUITE_ID
from gateway.protocol.errors import WireError
from gateway.protocol.wire import Reader, Writer

__all__ = [
    "DIGEST_LEN",
    "MAC_LEN",
    "MLKEM768_CT_LEN",
    "MLKEM768_EK_LEN",
    "X25519_LEN",
    "Finish",
    "FrameType",
    "Hello",
    "HelloReply",
]

MLKEM768_EK_LEN = 1184
MLKEM768_CT_LEN = 1088
X25519_LEN = 32
MAC_LEN = 48
DIGEST_LEN = 48  # SHA-384 of a policy list


class FrameType(enum.IntEnum):
    HELLO = 0x01
    HELLO_REPLY = 0x02
    FINISH = 0x03
    RECORD = 0x10


def _sigs(w: Writer, ed: bytes, ml: bytes, mac: bytes) -> None:
    w.blob(ed).blob(ml).blob(mac)


def _read_sigs(r: Reader) -> tuple[bytes, bytes, bytes]:
    return (
        r.blob_exact((ED25519_SIGNATURE_LEN,)),
        r.blob_exact((MLDSA65_SIGNATURE_LEN,)),
        r.blob_exact((MAC_LEN,)),
    )


def _policy_summary(r: Reader) -> tuple[int, bytes]:
    count = r.u32()
    if count > MAX_TUNNELS_PER_PEER:
        raise WireError(f"policy list of {count} tunnels exceeds {MAX_TUNNELS_PER_PEER}")
    return count, r.blob_exact((DIGEST_LEN,))


@dataclass(frozen=True, slots=True)
class Hello:
    """The initiator's first message. ``timestamp`` is its wall clock in microseconds since the
    Unix epoch, strictly increasing per initiator; ``signature`` is its Ed25519 signature over
    :meth:`signed_part` (context ``CTX_SIGN_HELLO``): the responder checks both before any
    expensive work, so only a pinned peer's fresh Hello costs it an encapsulation and signatures."""

    initiator_sae: str
    responder_sae: str
    timestamp: int
    nonce: bytes
    x25519: bytes
    mlkem_ek: bytes
    policy_count: int
    policy_digest: bytes
    signature: bytes = b""

    def signed_part(self) -> bytes:
        w = Writer().u16(SUITE_ID).name(self.initiator_sae).name(self.responder_sae)
        w.u64(self.timestamp).blob(self.nonce).blob(self.x25519).blob(self.mlkem_ek)
        return w.u32(self.policy_count).blob(self.policy_digest).bytes()

    def encode(self) -> bytes:
        return Writer().fixed(self.signed_part()).blob(self.signature).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        r = Reader(data)
        if r.u16() != SUITE_ID:
            raise WireError("unsupported cipher suite")
        m = cls(
            r.name(),
            r.name(),
            r.u64(),
            r.blob_exact((NONCE_LEN,)),
            r.blob_exact((X25519_LEN,)),
            r.blob_exact((MLKEM768_EK_LEN,)),
            *_policy_summary(r),
            r.blob_exact((ED25519_SIGNATURE_LEN,)),
        )
        r.end()
        return m


@dataclass(frozen=True, slots=True)
class HelloReply:
    responder_sae: str
    nonce: bytes
    x25519: bytes
    mlkem_ct: bytes
    policy_count: int
    policy_digest: bytes
    ed_sig: bytes = b""
    ml_sig: bytes = b""
    mac: bytes = b""

    def body(self) -> bytes:
        """The part the signatures cover."""
        w = Writer().u16(SUITE_ID).name(self.responder_sae)
        w.blob(self.nonce).blob(self.x25519).blob(self.mlkem_ct)
        return w.u32(self.policy_count).blob(self.policy_digest).bytes()

    def encode(self) -> bytes:
        w = Writer().fixed(self.body())
        _sigs(w, self.ed_sig, self.ml_sig, self.mac)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> HelloReply:
        r = Reader(data)
        if r.u16() != SUITE_ID:
            raise WireError("unsupported cipher suite")
        fields = (
            r.name(),
            r.blob_exact((NONCE_LEN,)),
            r.blob_exact((X25519_LEN,)),
            r.blob_exact((MLKEM768_CT_LEN,)),
            *_policy_summary(r),
        )
        m = cls(*fields, *_read_sigs(r))
        r.end()
        return m


@dataclass(frozen=True, slots=True)
class Finish:
    ed_sig: bytes
    ml_sig: bytes
    mac: bytes

    def encode(self) -> bytes:
        w = Writer()
        _sigs(w, self.ed_sig, self.ml_sig, self.mac)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Finish:
        r = Reader(data)
        m = cls(*_read_sigs(r))
        r.end()
        return m
