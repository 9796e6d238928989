"""Byte-level encoding: frame headers, a streaming frame splitter, field readers and writers.

Frame::

    version u8 | type u8 | length u16 (big endian) | payload[length]

Fields inside payloads are fixed-size integers or length-prefixed byte strings (u16 length).
Every decode is bounds-checked and raises :class:`WireError` (never IndexError, struct.error or
UnicodeDecodeError); a reader must be consumed exactly, trailing bytes are an error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.protocol.constants import HEADER_LEN, MAX_NAME_LEN, MAX_PAYLOAD, WIRE_VERSION
from gateway.protocol.errors import FrameTooLarge, UnsupportedVersion, WireError

__all__ = ["Frame", "FrameSplitter", "Reader", "Writer", "encode_frame", "encode_header"]

_HEADER = struct.Struct(">BBH")


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    payload: bytes

    @property
    def header(self) -> bytes:
        return encode_header(self.type, len(self.payload))


def encode_header(ftype: int, length: int) -> bytes:
    if not 0 <= length <= MAX_PAYLOAD:
        raise FrameTooLarge(f"frame payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(WIRE_VERSION, ftype, length)


def encode_frame(ftype: int, payload: bytes) -> bytes:
    return encode_header(ftype, len(payload)) + payload


class FrameSplitter:
    """Reassembles frames from a TCP byte stream.

    The header is validated as soon as its 4 bytes are in, so an oversized or foreign-version
    frame is refused before its payload is buffered; the buffer never exceeds one frame.
    After an error the splitter stays failed (the connection must be closed).
    """

    __slots__ = ("_buf", "_failed")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failed = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise WireError("connection already failed")
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER_LEN:
            version, ftype, length = _HEADER.unpack_from(self._buf)
            if version != WIRE_VERSION:
                self._failed = True
                raise UnsupportedVersion(
                    f"wire version {version}, this gateway speaks {WIRE_VERSION}")
            if length > MAX_PAYLOAD:
                self._failed = True
                raise FrameTooLarge(f"frame announces {length} bytes, limit is {MAX_PAYLOAD}")
            if len(self._buf) < HEADER_LEN + length:
                break
            frames.append(Frame(ftype, bytes(self._buf[HEADER_LEN : HEADER_LEN + length])))
            del self._buf[: HEADER_LEN + length]
        return frames


class Writer:
    """Builds a payload from fields."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> Writer:
        self._parts.append(struct.pack(">B", v))
        return self

    def u16(self, v: int) -> Writer:
        self._parts.append(struct.pack(">H", v))
        return self

    def u32(self, v: int) -> Writer:
        self._parts.append(struct.pack(">I", v))
        return self

    def u64(self, v: int) -> Writer:
        self._parts.append(struct.pack(">Q", v))
        return self

    def fixed(self, b: bytes) -> Writer:
        self._parts.append(b)
        return self

    def blob(self, b: bytes) -> Writer:
        if len(b) > 0xFFFF:
            raise WireError("field longer than 65535 bytes")
        self._parts.append(struct.pack(">H", len(b)) + b)
        return self

    def name(self, s: str) -> Writer:
        raw = s.encode()
        if not 0 < len(raw) <= MAX_NAME_LEN:
            raise WireError(f"name must be 1-{MAX_NAME_LEN} bytes of UTF-8")
        return self.blob(raw)

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Consumes a payload field by field; any short read or leftover is a WireError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise WireError("message truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def fixed(self, n: int) -> bytes:
        return self._take(n)

    def blob(self, max_len: int) -> bytes:
        n = self.u16()
        if n > max_len:
            raise WireError(f"field of {n} bytes exceeds its limit of {max_len}")
        return self._take(n)

    def blob_exact(self, allowed: tuple[int, ...]) -> bytes:
        b = self.blob(max(allowed))
        if len(b) not in allowed:
            raise WireError(f"field of {len(b)} bytes, expected one of {allowed}")
        return b

    def name(self) -> str:
        raw = self.blob(MAX_NAME_LEN)
        if not raw:
            raise WireError("empty name")
        try:
            s = raw.decode()
        except UnicodeDecodeError:
            raise WireError("name is not UTF-8") from None
        if not s.isprintable():
            # Names end up in logs: refuse control characters rather than escape them later.
            raise WireError("name contains control characters")
        return s

    def end(self) -> None:
        if self._pos != len(self._data):
            raise WireError(f"{len(self._data) - self._pos} trailing bytes")
