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
from gateway.protocol.inner import (
    AbortCode,
    Keepalive,
    KeyCheck,
    PolicyUpdate,
    RekeyAbort,
    RekeyConfirm,
    RekeyInit,
    decode_inner,
    encode_inner,
    policy_update_chunks,
)
from gateway.protocol.messages import Finish, Hello, HelloReply
from gateway.protocol.policy import Kind, Mode, TunnelPolicy, policy_digest
from gateway.protocol.wire import FrameSplitter, Reader, encode_frame

POLICIES = (TunnelPolicy("t1", Mode.QKD_PQC, ("k1", "k2")), TunnelPolicy("t2", Mode.PQC, (),
                                                                          Kind.ESP))
HELLO = Hello("sae-a", "sae-b", 1_764_000_000_000_000, b"n" * 32, b"x" * 32, b"e" * 1184, 2,
              policy_digest(POLICIES), b"s" * 64)


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
        s.feed(bytes([2, 1]) + (MAX_PAYLOAD + 1).to_bytes(2, "big"))
    assert s.buffered == 4  # the payload was never buffered
    with pytest.raises(WireError):
        s.feed(b"more")  # a failed stream stays failed


@pytest.mark.unit
def test_foreign_version_is_refused() -> None:
    for version in (1, 3):  # version 1 (the previous wire format) is refused by its header
        with pytest.raises(UnsupportedVersion, match="speaks 2"):
            FrameSplitter().feed(bytes([version, 1, 0, 0]))


@pytest.mark.unit
def test_messages_round_trip() -> None:
    assert Hello.decode(HELLO.encode()) == HELLO
    r = HelloReply("sae-b", b"n" * 32, b"x" * 32, b"c" * 1088, 2, policy_digest(POLICIES),
                   b"e" * 64, b"m" * 3309, b"h" * 48)
    assert HelloReply.decode(r.encode()) == r
    f = Finish(b"e" * 64, b"m" * 3309, b"h" * 48)
    assert Finish.decode(f.encode()) == f
    for m in (RekeyInit("t1", 5, Mode.QKD, ("id-1", ""), b"", b"x" * 32, b"n" * 32, 300),
              RekeyConfirm("t1", 5, b"h" * 48), RekeyAbort("t1", 5, AbortCode.STALE_EPOCH, 9),
              RekeyAbort("t1", 5, AbortCode.ACTIVATE_FAILED, 9), Keepalive(),
              Keepalive((KeyCheck("t1", 7, b"c" * 16, 1), KeyCheck("t2", 0, bytes(16), 2))),
              PolicyUpdate(True, 2, policy_digest(POLICIES), POLICIES, ("gone",)),
              PolicyUpdate(False, 0, b"", (), ("a", "b"))):
        assert decode_inner(encode_inner(m)) == m


@pytest.mark.unit
def test_a_policy_list_of_ten_thousand_tunnels_travels_in_bounded_records() -> None:
    """Issue 12's scale: the list is out of the handshake, cut into records under MAX_FRAME."""
    pols = [TunnelPolicy(f"tunnel-{i:05d}", Mode.QKD_PQC, ("kms-a", "kms-b")) for i in range(10_000)]
    chunks = policy_update_chunks(pols, ["old-1"], len(pols), policy_digest(pols))
    sizes = [len(encode_inner(c)) for c in chunks]
    assert max(sizes) + 4 + 8 + 16 <= MAX_PAYLOAD + 4  # header, sequence number, AEAD tag
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    again = [p for c in chunks for p in decode_inner(encode_inner(c)).upserts]  # type: ignore[union-attr]
    assert again == pols
    assert policy_digest(reversed(pols)) == policy_digest(pols)  # canonical: name order


@pytest.mark.unit
def test_a_hello_carries_no_policy_list_any_more() -> None:
    assert len(HELLO.encode()) < 1500  # ek (1184) + fixed fields: independent of tunnel count


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
    assert len(values) == len(set(values)) > 18


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
