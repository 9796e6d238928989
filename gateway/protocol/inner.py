"""Inner messages: what travels inside the encrypted records of an established session.

Layouts are in docs/protocol.md section 2. Decoders consume their input exactly and raise
WireError on anything malformed (never another exception).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.protocol.constants import (
    KEYCHECK_MAX_ENTRIES,
    MAX_KMS_PER_TUNNEL,
    NONCE_LEN,
    POLICY_CHUNK_BYTES,
)
from gateway.protocol.errors import WireError
from gateway.protocol.messages import (
    DIGEST_LEN,
    MAC_LEN,
    MLKEM768_CT_LEN,
    MLKEM768_EK_LEN,
    X25519_LEN,
)
from gateway.protocol.policy import Mode, TunnelPolicy
from gateway.protocol.wire import Reader, Writer

__all__ = [
    "CHECK_ANSWER",
    "CHECK_LEN",
    "CHECK_UNKNOWN",
    "AbortCode",
    "InnerMessage",
    "InnerType",
    "Keepalive",
    "KeyCheck",
    "PolicyUpdate",
    "RekeyAbort",
    "RekeyConfirm",
    "RekeyInit",
    "RekeyResp",
    "decode_inner",
    "encode_inner",
    "policy_update_chunks",
]

MAX_KEY_ID_LEN = 64
CHECK_LEN = 16
CHECK_ANSWER = 0x01  # KeyCheck flag: the sender waits for the receiver's entry of this tunnel
CHECK_UNKNOWN = 0x02  # KeyCheck flag: epoch restored from the state store, key check unknown


class InnerType(enum.IntEnum):
    REKEY_INIT = 0x20
    REKEY_RESP = 0x21
    REKEY_CONFIRM = 0x22
    REKEY_ABORT = 0x23
    KEEPALIVE = 0x24
    POLICY_UPDATE = 0x25


class AbortCode(enum.IntEnum):
    FETCH_FAILED = 1  # the responder's KMS could not return a key ID
    POLICY = 2  # achieved set does not satisfy the tunnel's mode
    STALE_EPOCH = 3  # epoch not above the responder's highest; see highest_epoch
    COLLISION = 4  # reserved: collisions are resolved without a message (see rekey.py)
    TIMEOUT = 5
    BAD_MAC = 6  # key confirmation failed
    UNKNOWN_TUNNEL = 7
    KEY_REUSE = 8  # a key ID that was already used
    ACTIVATE_FAILED = 9  # the sender's data plane could not switch to this epoch
    SHUTDOWN = 10  # the sender stops (tunnel STOP_NOTICE_TUNNEL, epoch 0): see machine.py


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
class KeyCheck:
    """The sender's active epoch of a tunnel and that epoch's public key check (16 B; zeros
    with CHECK_UNKNOWN when the epoch was restored without its keys, or for epoch 0)."""

    tunnel: str
    epoch: int
    check: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Liveness, plus key checks: divergence between the ends is seen within one interval."""

    entries: tuple[KeyCheck, ...] = ()

    def encode(self) -> bytes:
        w = Writer().u16(len(self.entries))
        for e in self.entries:
            w.name(e.tunnel).u64(e.epoch).fixed(e.check).u8(e.flags)
        return w.bytes()

    @classmethod
    def decode(cls, r: Reader) -> Keepalive:
        n = r.u16()
        if n > KEYCHECK_MAX_ENTRIES:
            raise WireError(f"keepalive with {n} entries, limit {KEYCHECK_MAX_ENTRIES}")
        return cls(tuple(KeyCheck(r.name(), r.u64(), r.fixed(CHECK_LEN), r.u8())
                         for _ in range(n)))


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    """Part of the sender's policy list: tunnels set (added or changed) and removed. The last
    chunk of an update is ``final`` and carries the count and digest of the sender's whole list
    after it, which the receiver checks against its view (the session's first update replaces
    the empty view and must match the digest signed in the handshake)."""

    final: bool
    count: int
    digest: bytes  # DIGEST_LEN bytes when final, else empty
    upserts: tuple[TunnelPolicy, ...] = ()
    removals: tuple[str, ...] = ()

    def encode(self) -> bytes:
        w = Writer().u8(int(self.final)).u32(self.count).blob(self.digest).u16(len(self.upserts))
        for p in self.upserts:
            p.encode(w)
        w.u16(len(self.removals))
        for name in self.removals:
            w.name(name)
        return w.bytes()

    @classmethod
    def decode(cls, r: Reader) -> PolicyUpdate:
        flags, count = r.u8(), r.u32()
        if flags > 1:
            raise WireError("unknown policy update flags")
        digest = r.blob_exact((DIGEST_LEN,) if flags else (0,))
        # Each entry takes >= 5 bytes and the record is bounded, so n is bounded too.
        upserts = tuple(TunnelPolicy.decode(r) for _ in range(r.u16()))
        removals = tuple(r.name() for _ in range(r.u16()))
        if len({p.name for p in upserts} | set(removals)) != len(upserts) + len(removals):
            raise WireError("policy update names a tunnel twice")
        return cls(bool(flags), count, digest, upserts, removals)


def policy_update_chunks(upserts: Sequence[TunnelPolicy], removals: Sequence[str], count: int,
                         digest: bytes) -> list[PolicyUpdate]:
    """One update split into records of at most POLICY_CHUNK_BYTES of entries; the last chunk
    is final (an empty update is one final chunk)."""
    chunks: list[PolicyUpdate] = []
    ups: list[TunnelPolicy] = []
    rems: list[str] = []
    size = 0

    def room(n: int) -> None:
        nonlocal ups, rems, size
        if size + n > POLICY_CHUNK_BYTES and (ups or rems):
            chunks.append(PolicyUpdate(False, 0, b"", tuple(ups), tuple(rems)))
            ups, rems, size = [], [], 0
        size += n

    for p in upserts:
        w = Writer()
        p.encode(w)
        room(len(w.bytes()))
        ups.append(p)
    for name in removals:
        room(len(Writer().name(name).bytes()))
        rems.append(name)
    chunks.append(PolicyUpdate(True, count, digest, tuple(ups), tuple(rems)))
    return chunks


InnerMessage = RekeyInit | RekeyResp | RekeyConfirm | RekeyAbort | Keepalive | PolicyUpdate

_INNER: dict[int, type[InnerMessage]] = {
    InnerType.REKEY_INIT: RekeyInit,
    InnerType.REKEY_RESP: RekeyResp,
    InnerType.REKEY_CONFIRM: RekeyConfirm,
    InnerType.REKEY_ABORT: RekeyAbort,
    InnerType.KEEPALIVE: Keepalive,
    InnerType.POLICY_UPDATE: PolicyUpdate,
}
_TYPE_OF = {v: k for k, v in _INNER.items()}


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
    return bytes([_TYPE_OF[type(msg)]]) + msg.encode()
