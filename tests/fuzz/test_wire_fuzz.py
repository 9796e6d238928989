"""Protocol parsers under arbitrary input: the frame splitter over a byte stream cut anywhere,
the outer handshake messages and the inner (post-handshake) messages. A parser either returns a
value that re-encodes to exactly the bytes it read, or raises WireError: never another
exception, never a buffer beyond one frame."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.constants import HEADER_LEN, MAX_FRAME, MAX_PAYLOAD, WIRE_VERSION
from gateway.protocol.errors import WireError
from gateway.protocol.inner import decode_inner, encode_inner
from gateway.protocol.messages import Finish, Hello, HelloReply
from gateway.protocol.wire import FrameSplitter, encode_frame
from tests.fuzz.profiles import FUZZ

pytestmark = pytest.mark.fuzz

frames = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=6)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


@FUZZ
@given(frames, st.lists(st.integers(0, 10_000), max_size=8), st.binary(max_size=64))
def test_splitter_reassembles_any_cut_and_rejects_junk_cleanly(
        sent: list[tuple[int, bytes]], cuts: list[int], junk: bytes) -> None:
    stream = b"".join(encode_frame(t, p) for t, p in sent)
    splitter = FrameSplitter()
    got = []
    for chunk in _chunks(stream, cuts):
        got += [(f.type, f.payload) for f in splitter.feed(chunk)]
        assert splitter.buffered < MAX_FRAME
    assert got == sent
    # Then arbitrary junk: frames, a clean WireError, or a wait for more; never another error.
    try:
        for f in splitter.feed(junk):
            assert len(f.payload) <= MAX_PAYLOAD
    except WireError:
        with pytest.raises(WireError):
            splitter.feed(b"")  # a failed splitter stays failed
    assert splitter.buffered <= MAX_FRAME


@FUZZ
@given(st.binary(max_size=2048))
def test_splitter_on_arbitrary_bytes(data: bytes) -> None:
    splitter = FrameSplitter()
    try:
        splitter.feed(data)
    except WireError:
        return
    assert splitter.buffered <= max(HEADER_LEN + MAX_PAYLOAD, len(data))


@FUZZ
@given(st.integers(MAX_PAYLOAD + 1, 0xFFFF), st.integers(0, 255))
def test_oversized_header_refused_before_payload(length: int, ftype: int) -> None:
    splitter = FrameSplitter()
    with pytest.raises(WireError):
        splitter.feed(bytes([WIRE_VERSION, ftype]) + length.to_bytes(2, "big"))


@FUZZ
@given(st.binary(max_size=1500))
def test_inner_messages_decode_or_wire_error(data: bytes) -> None:
    try:
        msg = decode_inner(data)
    except WireError:
        return
    assert encode_inner(msg) == data  # canonical: one encoding per message


@FUZZ
@given(st.binary(max_size=1500))
def test_inner_messages_after_a_valid_type_byte(body: bytes) -> None:
    for t in range(0, 8):
        try:
            msg = decode_inner(bytes([t]) + body)
        except WireError:
            continue
        assert encode_inner(msg) == bytes([t]) + body


@FUZZ
@given(st.binary(max_size=3000))
def test_outer_handshake_messages_decode_or_wire_error(data: bytes) -> None:
    for cls in (Hello, HelloReply, Finish):
        try:
            msg = cls.decode(data)  # type: ignore[attr-defined]
        except WireError:
            continue
        assert msg.encode() == data
