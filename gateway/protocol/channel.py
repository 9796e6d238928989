"""The encrypted record layer of an established control session.

Record frame (type RECORD)::

    header(4) | seq u64 | AES-256-GCM(key_dir, nonce = dir u32 || seq u64,
                                      aad = header || seq, inner message) (ciphertext || 16 B tag)

Each direction has its own key and its own 32-bit direction constant in the nonce, so a record
can neither be reflected back nor replayed: the receiver accepts exactly the next sequence number
(TCP delivers in order; a gap means loss or tampering and the session ends). A failed record
changes no state.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keymaterial import Secret
from gateway.protocol.constants import MAX_PAYLOAD
from gateway.protocol.errors import ReplayError, WireError
from gateway.protocol.messages import FrameType
from gateway.protocol.wire import encode_header

__all__ = ["DIR_I2R", "DIR_R2I", "Channel"]

DIR_I2R = 0
DIR_R2I = 1
_TAG = 16
_SEQ = struct.Struct(">Q")
# A 64-bit counter never wraps in practice; refusing at the limit keeps the nonce unique anyway.
_SEQ_LIMIT = 2**64 - 1


class Channel:
    """AES-256-GCM records with per-direction keys and strict sequence numbers."""

    __slots__ = ("_recv", "_recv_dir", "_recv_seq", "_send", "_send_dir", "_send_seq")

    def __init__(self, send_key: Secret, recv_key: Secret, *, initiator: bool) -> None:
        self._send = AESGCM(send_key.reveal())
        self._recv = AESGCM(recv_key.reveal())
        self._send_dir = DIR_I2R if initiator else DIR_R2I
        self._recv_dir = DIR_R2I if initiator else DIR_I2R
        self._send_seq = 0
        self._recv_seq = 0

    def __repr__(self) -> str:
        return f"Channel(sent={self._send_seq}, received={self._recv_seq})"

    def seal(self, plaintext: bytes) -> bytes:
        if self._send_seq >= _SEQ_LIMIT:
            raise ReplayError("record sequence space exhausted; reconnect")
        seq = _SEQ.pack(self._send_seq)
        length = len(seq) + len(plaintext) + _TAG
        if length > MAX_PAYLOAD:
            raise WireError("record too large")
        header = encode_header(FrameType.RECORD, length)
        nonce = struct.pack(">I", self._send_dir) + seq
        ct = self._send.encrypt(nonce, plaintext, header + seq)
        self._send_seq += 1
        return header + seq + ct

    def open(self, header: bytes, payload: bytes) -> bytes:
        if len(payload) < _SEQ.size + _TAG:
            raise WireError("record truncated")
        seq = payload[: _SEQ.size]
        if _SEQ.unpack(seq)[0] != self._recv_seq:
            raise ReplayError("record out of sequence (replayed, reordered or dropped)")
        nonce = struct.pack(">I", self._recv_dir) + seq
        try:
            pt = self._recv.decrypt(nonce, payload[_SEQ.size :], header + seq)
        except InvalidTag:
            raise ReplayError("record failed authentication") from None
        self._recv_seq += 1
        return pt
