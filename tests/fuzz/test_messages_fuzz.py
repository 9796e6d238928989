"""Mutation fuzzing of the protocol messages: start from a VALID message (random fields of the
right shapes), flip, cut, insert or splice bytes, decode. A decoder returns a message that
re-encodes to exactly its input, or raises a ProtocolError (WireError, PolicyError): the
machine turns those into a closed connection. Anything else (IndexError, ValueError,
UnicodeDecodeError, struct.error...) is a bug."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity import ED25519_SIGNATURE_LEN, MLDSA65_SIGNATURE_LEN
from gateway.protocol.constants import NONCE_LEN
from gateway.protocol.errors import ProtocolError
from gateway.protocol.inner import (
    CHECK_LEN,
    AbortCode,
    Keepalive,
    KeyCheck,
    PolicyUpdate,
    RekeyAbort,
    RekeyConfirm,
    RekeyInit,
    RekeyResp,
    decode_inner,
    encode_inner,
)
from gateway.protocol.messages import (
    DIGEST_LEN,
    MAC_LEN,
    MLKEM768_CT_LEN,
    MLKEM768_EK_LEN,
    X25519_LEN,
    Finish,
    Hello,
    HelloReply,
)
from gateway.protocol.policy import Kind, Mode, TunnelPolicy
from tests.fuzz.profiles import FUZZ

pytestmark = pytest.mark.fuzz

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cf", "Zl", "Zp",
                                                                  "Co", "Cn")),
                min_size=1, max_size=20).filter(lambda s: s.isprintable()
                                                and 0 < len(s.encode()) <= 64)
key_ids = st.text(st.sampled_from("abcdef0123456789-_.:"), max_size=36)
u64 = st.integers(0, 2**64 - 1)


def blob(n: int) -> st.SearchStrategy[bytes]:
    # Large fixed-size fields (ML-KEM, ML-DSA) from a seed: drawing them byte by byte is slow
    # and their content does not matter to the parser, only their place and length.
    if n <= 64:
        return st.binary(min_size=n, max_size=n)
    return st.integers(0, 2**32).map(lambda seed: random.Random(seed).randbytes(n))


@st.composite
def policy(draw: st.DrawFn, name: str) -> TunnelPolicy:
    mode = draw(st.sampled_from(Mode))
    kms = () if mode == Mode.PQC else tuple(draw(st.lists(names, min_size=1, max_size=3,
                                                          unique=True)))
    return TunnelPolicy(name, mode, kms, draw(st.sampled_from(Kind)))


policies = st.lists(names, max_size=3, unique=True).flatmap(
    lambda ns: st.tuples(*(policy(n) for n in ns)))

# Wire version 2: the handshake carries a digest of the policy list (the list itself follows in
# encrypted PolicyUpdate records) and the Hello is timestamped and signed (Ed25519).
u16 = st.integers(0, 2**16 - 1)
counts = st.integers(0, 16384)  # the largest policy list a handshake may announce
hello = st.builds(Hello, names, names, u64, blob(NONCE_LEN), blob(X25519_LEN),
                  blob(MLKEM768_EK_LEN), counts, blob(DIGEST_LEN), blob(ED25519_SIGNATURE_LEN))
hello_reply = st.builds(HelloReply, names, blob(NONCE_LEN), blob(X25519_LEN),
                        blob(MLKEM768_CT_LEN), counts, blob(DIGEST_LEN),
                        blob(ED25519_SIGNATURE_LEN), blob(MLDSA65_SIGNATURE_LEN), blob(MAC_LEN))
finish = st.builds(Finish, blob(ED25519_SIGNATURE_LEN), blob(MLDSA65_SIGNATURE_LEN),
                   blob(MAC_LEN))
inner = st.one_of(
    st.builds(RekeyInit, names, u64, st.sampled_from(Mode),
              st.lists(key_ids, max_size=4).map(tuple),
              st.sampled_from([b"", bytes(MLKEM768_EK_LEN)]), blob(X25519_LEN),
              blob(NONCE_LEN), st.integers(0, 2**32 - 1)),
    st.builds(RekeyResp, names, u64, st.integers(0, 255),
              st.sampled_from([b"", bytes(MLKEM768_CT_LEN)]), blob(X25519_LEN),
              blob(NONCE_LEN), st.integers(0, 2**32 - 1), blob(MAC_LEN)),
    st.builds(RekeyConfirm, names, u64, blob(MAC_LEN)),
    st.builds(RekeyAbort, names, u64, st.sampled_from(AbortCode), u64),
    st.builds(Keepalive, st.lists(st.builds(KeyCheck, names, u64, blob(CHECK_LEN),
                                            st.integers(0, 3)), max_size=3).map(tuple)),
    st.deferred(lambda: policy_update()),
)


@st.composite
def policy_update(draw: st.DrawFn) -> PolicyUpdate:
    """A valid chunk: a tunnel is named once, as an upsert or as a removal."""
    ups = draw(policies)
    taken = {p.name for p in ups}
    removals = tuple(draw(st.lists(names.filter(lambda n: n not in taken), max_size=3,
                                   unique=True)))
    final = draw(st.booleans())
    return PolicyUpdate(final, draw(counts), draw(blob(DIGEST_LEN)) if final else b"", ups,
                        removals)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set", "splice"]))
        i = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del buf[i:i + draw(st.integers(1, 64))]
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "set" and buf:
            buf[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "splice":
            buf = buf[:i] + bytearray(draw(st.binary(max_size=8))) * draw(st.integers(0, 3))
    return bytes(buf)


def check(decode: object, data: bytes) -> None:
    try:
        msg = decode(data)  # type: ignore[operator]
    except ProtocolError:
        return
    assert msg.encode() == data


@FUZZ
@given(st.data(), st.sampled_from(["hello", "reply", "finish"]))
def test_mutated_handshake_messages(data: st.DataObject, which: str) -> None:
    cls, strategy = {"hello": (Hello, hello), "reply": (HelloReply, hello_reply),
                     "finish": (Finish, finish)}[which]
    msg = data.draw(strategy)
    raw = msg.encode()
    assert cls.decode(raw) == msg  # the valid message round-trips
    check(cls.decode, data.draw(mutated(raw)))


@FUZZ
@given(st.data())
def test_mutated_inner_messages(data: st.DataObject) -> None:
    msg = data.draw(inner)
    raw = encode_inner(msg)
    assert decode_inner(raw) == msg
    bad = data.draw(mutated(raw))
    try:
        back = decode_inner(bad)
    except ProtocolError:
        return
    assert encode_inner(back) == bad
