"""Frame splitter and message decoders: limits, malformed input, fuzzing (typed errors only)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import labels
from gateway.protocol.constants import MAX_PAYLOAD
from gateway.protocol.errors import FrameTooLarge, UnsupportedVersion, WireError
from gateway.protocol.messages import (
    AbortCode,
    Finish,
    Hello,
    HelloReply,
    RekeyAbort,
    RekeyConfirm,
    RekeyInit,
    decode_inner,
    encode_inner,
)
from gateway.protocol.policy import Kind, Mode, TunnelPolicy
from gateway.protocol.wire import FrameSplitter, Reader, encode_frame

HELLO = Hello("sae-a", "sae-b", b"n" * 32, b"x" * 32, b"e" * 1184, (
    TunnelPolicy("t1", Mode.QKD_PQC, ("k1", "k2")), TunnelPolicy("t2", Mode.PQC, (), Kind.ESP)))


@pytest.mark.unit
def test_frames_reassemble_across_arbitrary_splits() -> None:
    data = encode_frame(1, b"abc") + encode_frame(2, b"") + encode_frame(3, b"z" * 1000)
    for cut in range(len(data)):
        s = FrameSplitter()
        frames = s.feed(data[:cut]) + s.feed(data[cut:])
        assert [(f.type, f.payload) for f in frames] == [(1, b"abc"), (2, b""), (3, b"z" * 1000)]
        assert s.buffered == 0


@pytest.mark.unit
def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    s = FrameSplitter()
    with pytest.raises(FrameTooLarge):
        s.feed(bytes([1, 1]) + (MAX_PAYLOAD + 1).to_bytes(2, "big"))
    assert s.buffered == 4  # the payload was never buffered
    with pytest.raises(WireError):
        s.feed(b"more")  # a failed stream stays failed


@pytest.mark.unit
def test_foreign_version_is_refused() -> None:
    with pytest.raises(UnsupportedVersion):
        FrameSplitter().feed(bytes([2, 1, 0, 0]))


@pytest.mark.unit
def test_messages_round_trip() -> None:
    assert Hello.decode(HELLO.encode()) == HELLO
    r = HelloReply("sae-b", b"n" * 32, b"x" * 32, b"c" * 1088, HELLO.policies, b"e" * 64,
                   b"m" * 3309, b"h" * 48)
    assert HelloReply.decode(r.encode()) == r
    f = Finish(b"e" * 64, b"m" * 3309, b"h" * 48)
    assert Finish.decode(f.encode()) == f
    for m in (RekeyInit("t1", 5, Mode.QKD, ("id-1", ""), b"", b"x" * 32, b"n" * 32, 300),
              RekeyConfirm("t1", 5, b"h" * 48), RekeyAbort("t1", 5, AbortCode.STALE_EPOCH, 9)):
        assert decode_inner(encode_inner(m)) == m


@pytest.mark.unit
def test_truncated_and_padded_messages_are_refused() -> None:
    data = HELLO.encode()
    for cut in (0, 1, 5, len(data) // 2, len(data) - 1):
        with pytest.raises(WireError):
            Hello.decode(data[:cut])
    with pytest.raises(WireError, match="trailing"):
        Hello.decode(data + b"\0")


@pytest.mark.unit
def test_names_with_control_characters_are_refused() -> None:
    bad = HELLO.encode().replace(b"sae-a", b"sae\na")
    with pytest.raises(WireError, match="control"):
        Hello.decode(bad)


@pytest.mark.unit
def test_labels_are_all_distinct() -> None:
    values = [v for k, v in vars(labels).items() if k.isupper() and isinstance(v, bytes)]
    assert len(values) == len(set(values)) > 15


def _policy(b: bytes) -> object:
    return TunnelPolicy.decode(Reader(b))


DECODERS: list[Callable[[bytes], object]] = [Hello.decode, HelloReply.decode, Finish.decode,
                                             decode_inner, _policy]


@pytest.mark.fuzz
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, len(DECODERS) - 1))
def test_decoders_raise_only_wire_errors(data: bytes, which: int) -> None:
    with contextlib.suppress(WireError):
        DECODERS[which](data)


@pytest.mark.fuzz
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_splitter_raises_only_wire_errors_and_bounds_its_buffer(chunks: list[bytes]) -> None:
    s = FrameSplitter()
    try:
        for c in chunks:
            s.feed(c)
            assert s.buffered <= 4 + MAX_PAYLOAD
    except WireError:
        pass


@pytest.mark.fuzz
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_single_byte_corruption_of_a_hello_never_crashes(pos: int, val: int) -> None:
    data = bytearray(HELLO.encode())
    data[pos % len(data)] = val
    with contextlib.suppress(WireError):
        Hello.decode(bytes(data))
