"""Message types and their byte layouts (documented in docs/protocol.md).

Handshake messages travel in plaintext frames; everything after the handshake is an inner message
inside an encrypted record (see channel.py). Decoders raise WireError on anything malformed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.identity import ED25519_SIGNATURE_LEN, MLDSA65_SIGNATURE_LEN
from gateway.protocol.constants import MAX_KMS_PER_TUNNEL, NONCE_LEN, SUITE_ID
from gateway.protocol.errors import WireError
from gateway.protocol.policy import Mode, TunnelPolicy, decode_policies, encode_policies
from gateway.protocol.wire import Reader, Writer

__all__ = [
    "MLKEM768_CT_LEN",
    "MLKEM768_EK_LEN",
    "AbortCode",
    "Finish",
    "FrameType",
    "Hello",
    "HelloReply",
    "InnerType",
    "Keepalive",
    "RekeyAbort",
    "RekeyConfirm",
    "RekeyInit",
    "RekeyResp",
    "decode_inner",
]

MLKEM768_EK_LEN = 1184
MLKEM768_CT_LEN = 1088
X25519_LEN = 32
MAC_LEN = 48
MAX_KEY_ID_LEN = 64


class FrameType(enum.IntEnum):
    HELLO = 0x01
    HELLO_REPLY = 0x02
    FINISH = 0x03
    RECORD = 0x10


class InnerType(enum.IntEnum):
    REKEY_INIT = 0x20
    REKEY_RESP = 0x21
    REKEY_CONFIRM = 0x22
    REKEY_ABORT = 0x23
    KEEPALIVE = 0x24


class AbortCode(enum.IntEnum):
    FETCH_FAILED = 1  # the responder's KMS could not return a key ID
    POLICY = 2  # achieved set does not satisfy the tunnel's mode
    STALE_EPOCH = 3  # epoch not above the responder's highest; see highest_epoch
    COLLISION = 4  # reserved: v1 resolves collisions silently (see rekey.py)
    TIMEOUT = 5
    BAD_MAC = 6  # key confirmation failed
    UNKNOWN_TUNNEL = 7
    KEY_REUSE = 8  # a key ID that was already used


def _sigs(w: Writer, ed: bytes, ml: bytes, mac: bytes) -> None:
    w.blob(ed).blob(ml).blob(mac)


def _read_sigs(r: Reader) -> tuple[bytes, bytes, bytes]:
    return (
        r.blob_exact((ED25519_SIGNATURE_LEN,)),
        r.blob_exact((MLDSA65_SIGNATURE_LEN,)),
        r.blob_exact((MAC_LEN,)),
    )


@dataclass(frozen=True, slots=True)
class Hello:
    initiator_sae: str
    responder_sae: str
    nonce: bytes
    x25519: bytes
    mlkem_ek: bytes
    policies: tuple[TunnelPolicy, ...]

    def encode(self) -> bytes:
        w = Writer().u16(SUITE_ID).name(self.initiator_sae).name(self.responder_sae)
        w.blob(self.nonce).blob(self.x25519).blob(self.mlkem_ek)
        encode_policies(w, self.policies)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        r = Reader(data)
        if r.u16() != SUITE_ID:
            raise WireError("unsupported cipher suite")
        m = cls(
            r.name(),
            r.name(),
            r.blob_exact((NONCE_LEN,)),
            r.blob_exact((X25519_LEN,)),
            r.blob_exact((MLKEM768_EK_LEN,)),
            decode_policies(r),
        )
        r.end()
        return m


@dataclass(frozen=True, slots=True)
class HelloReply:
    responder_sae: str
    nonce: bytes
    x25519: bytes
    mlkem_ct: bytes
    policies: tuple[TunnelPolicy, ...]
    ed_sig: bytes = b""
    ml_sig: bytes = b""
    mac: bytes = b""

    def body(self) -> bytes:
        """The part the signatures cover."""
        w = Writer().u16(SUITE_ID).name(self.responder_sae)
        w.blob(self.nonce).blob(self.x25519).blob(self.mlkem_ct)
        encode_policies(w, self.policies)
        return w.bytes()

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
            decode_policies(r),
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


@dataclass(frozen=True, slots=True)
class RekeyInit:
    tunnel: str
    epoch: int
    mode: Mode
    key_ids: tuple[str, ...]  # one per KMS path in combiner order; "" = path left out
    mlkem_ek: bytes  # empty when the mode leaves ML-KEM out
    x25519: bytes
    nonce: bytes
    spi: int

    def encode(self) -> bytes:
        w = Writer().name(self.tunnel).u64(self.epoch).u8(self.mode).u8(len(self.key_ids))
        for k in self.key_ids:
            w.blob(k.encode())
        w.blob(self.mlkem_ek).blob(self.x25519).blob(self.nonce).u32(self.spi)
        return w.bytes()

    @classmethod
    def decode(cls, r: Reader) -> RekeyInit:
        tunnel, epoch = r.name(), r.u64()
        try:
            mode = Mode(r.u8())
        except ValueError:
            raise WireError("unknown mode") from None
        n = r.u8()
        if n > MAX_KMS_PER_TUNNEL:
            raise WireError("too many key IDs")
        key_ids = tuple(_key_id(r.blob(MAX_KEY_ID_LEN)) for _ in range(n))
        ek = r.blob_exact((0, MLKEM768_EK_LEN))
        return cls(tunnel, epoch, mode, key_ids, ek, r.blob_exact((X25519_LEN,)),
                   r.blob_exact((NONCE_LEN,)), r.u32())


def _key_id(raw: bytes) -> str:
    try:
        s = raw.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("key ID is not ASCII") from None
    if not all(c.isalnum() or c in "-_.:" for c in s):
        raise WireError("key ID has characters outside [A-Za-z0-9-_.:]")
    return s


@dataclass(frozen=True, slots=True)
class RekeyResp:
    tunnel: str
    epoch: int
    qkd_mask: int  # QKD paths the responder could fetch; < the offered set only in mode "any"
    mlkem_ct: bytes
    x25519: bytes
    nonce: bytes
    spi: int
    mac: bytes

    def encode(self) -> bytes:
        w = Writer().name(self.tunnel).u64(self.epoch).u8(self.qkd_mask).blob(self.mlkem_ct)
        return w.blob(self.x25519).blob(self.nonce).u32(self.spi).blob(self.mac).bytes()

    @classmethod
    def decode(cls, r: Reader) -> RekeyResp:
        return cls(r.name(), r.u64(), r.u8(), r.blob_exact((0, MLKEM768_CT_LEN)),
                   r.blob_exact((X25519_LEN,)), r.blob_exact((NONCE_LEN,)), r.u32(),
                   r.blob_exact((MAC_LEN,)))


@dataclass(frozen=True, slots=True)
class RekeyConfirm:
    tunnel: str
    epoch: int
    mac: bytes

    def encode(self) -> bytes:
        return Writer().name(self.tunnel).u64(self.epoch).blob(self.mac).bytes()

    @classmethod
    def decode(cls, r: Reader) -> RekeyConfirm:
        return cls(r.name(), r.u64(), r.blob_exact((MAC_LEN,)))


@dataclass(frozen=True, slots=True)
class RekeyAbort:
    tunnel: str
    epoch: int
    code: AbortCode
    highest_epoch: int

    def encode(self) -> bytes:
        w = Writer().name(self.tunnel).u64(self.epoch).u8(self.code).u64(self.highest_epoch)
        return w.bytes()

    @classmethod
    def decode(cls, r: Reader) -> RekeyAbort:
        tunnel, epoch = r.name(), r.u64()
        try:
            code = AbortCode(r.u8())
        except ValueError:
            raise WireError("unknown abort code") from None
        return cls(tunnel, epoch, code, r.u64())


@dataclass(frozen=True, slots=True)
class Keepalive:
    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, r: Reader) -> Keepalive:
        return cls()


InnerMessage = RekeyInit | RekeyResp | RekeyConfirm | RekeyAbort | Keepalive

_INNER: dict[int, type[RekeyInit | RekeyResp | RekeyConfirm | RekeyAbort | Keepalive]] = {
    InnerType.REKEY_INIT: RekeyInit,
    InnerType.REKEY_RESP: RekeyResp,
    InnerType.REKEY_CONFIRM: RekeyConfirm,
    InnerType.REKEY_ABORT: RekeyAbort,
    InnerType.KEEPALIVE: Keepalive,
}
_TYPE_OF = {v: k for k, v in _INNER.items()}


def inner_type(msg: InnerMessage) -> int:
    return _TYPE_OF[type(msg)]


def decode_inner(plaintext: bytes) -> InnerMessage:
    if not plaintext:
        raise WireError("empty record")
    cls = _INNER.get(plaintext[0])
    if cls is None:
        raise WireError(f"unknown message type 0x{plaintext[0]:02x}")
    r = Reader(plaintext[1:])
    msg = cls.decode(r)
    r.end()
    return msg


def encode_inner(msg: InnerMessage) -> bytes:
    return bytes([inner_type(msg)]) + msg.encode()
