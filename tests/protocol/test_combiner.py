"""Combiner: known-answer vectors, an independent re-implementation, and property tests."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.keymaterial import Secret
from gateway.protocol import labels
from gateway.protocol.combiner import (
    CombinerSecrets,
    QkdSlot,
    RekeyTranscript,
    SessionKeys,
    combine,
    confirm_mac,
)
from gateway.protocol.errors import PolicyError
from gateway.protocol.policy import Kind, Mode
from tests.protocol import gen_vectors

VECTORS = json.loads((Path(__file__).parent / "vectors" / "combiner.json").read_text())["vectors"]
OUTPUTS = ("wg_psk", "esp_i2r", "esp_r2i", "confirm_i", "confirm_r")


def _hkdf_expand(prk: bytes, info: bytes, n: int) -> bytes:
    # RFC 5869 section 2.3, written out independently of the code under test.
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha384).digest()
        out += t
        i += 1
    return out[:n]


@pytest.mark.unit
@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_known_answer_vectors(vec: dict[str, Any]) -> None:
    inp = vec["inputs"]
    case = next(c for c in gen_vectors.CASES if c["name"] == vec["name"])
    ct = bytes.fromhex(inp["mlkem_ct"]) or None
    again = gen_vectors.build(case, ct)
    assert again["transcript"] == vec["transcript"]
    assert again["inputs"] == inp
    assert again["outputs"] == vec["outputs"]


@pytest.mark.unit
@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors_match_an_independent_implementation(vec: dict[str, Any]) -> None:
    """One HKDF-Extract per input, chained (TLS 1.3 / RFC 9370 style), written out here from
    docs/protocol.md section 5 without the code under test."""
    inp, outs = vec["inputs"], vec["outputs"]
    inputs = [bytes.fromhex(inp["mlkem_ss"]) if inp["mlkem_ss"] else labels.ABSENT_MLKEM_SS]
    for q in inp["qkd"]:
        inputs.append(bytes.fromhex(q["key"]) if q["key"] else labels.ABSENT_QKD_KEY)
    inputs.append(bytes.fromhex(inp["x25519_ss"]))
    prk = labels.REKEY_SALT
    for ikm in inputs:  # HKDF-Extract(salt = previous PRK, IKM = the next input)
        prk = hmac.new(prk, ikm, hashlib.sha384).digest()
    th = hashlib.sha384(bytes.fromhex(vec["transcript"])).digest()
    assert th.hex() == outs["transcript_hash"]
    for name, label, n in (("wg_psk", labels.REKEY_WG_PSK, 32), ("esp_i2r", labels.REKEY_ESP_I2R, 36),
                           ("esp_r2i", labels.REKEY_ESP_R2I, 36),
                           ("confirm_i", labels.REKEY_CONFIRM_I, 48),
                           ("confirm_r", labels.REKEY_CONFIRM_R, 48),
                           ("key_check", labels.REKEY_KEY_CHECK, 16)):
        assert _hkdf_expand(prk, label + th, n).hex() == outs[name], name
    # Not the v1 combiner (one Extract over the concatenation): that gives other keys.
    flat = hmac.new(labels.REKEY_SALT, b"".join(inputs), hashlib.sha384).digest()
    assert _hkdf_expand(flat, labels.REKEY_WG_PSK + th, 32).hex() != outs["wg_psk"]


# -- properties ------------------------------------------------------------------------------
B32 = st.binary(min_size=32, max_size=32)


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[CombinerSecrets, RekeyTranscript]:
    n = draw(st.integers(0, 4))
    slots = tuple(QkdSlot(f"kms{i}", f"id-{i}-{draw(st.integers(0, 99))}") for i in range(n))
    t = RekeyTranscript(
        draw(st.sampled_from(list(Mode))), draw(st.sampled_from(list(Kind))),
        draw(st.integers(1, 2**64 - 1)), "sae-a", "sae-b", draw(st.sampled_from(["t1", "t2"])),
        slots, draw(st.binary(min_size=1, max_size=40)), draw(st.binary(min_size=1, max_size=40)),
        draw(B32), draw(B32), draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)),
        draw(B32), draw(B32))
    s = CombinerSecrets(Secret(draw(B32)), tuple(Secret(draw(B32)) for _ in slots),
                        Secret(draw(B32)))
    return s, t


def _outputs(k: SessionKeys) -> list[bytes]:
    return [getattr(k, n).reveal() for n in OUTPUTS] + [k.key_check]


def _bump(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def _mutations(s: CombinerSecrets, t: RekeyTranscript) -> list[tuple[str, CombinerSecrets,
                                                                     RekeyTranscript]]:
    assert s.mlkem_ss is not None
    out = [("mlkem_ss", dataclasses.replace(s, mlkem_ss=Secret(_bump(s.mlkem_ss.reveal()))), t)]
    out.append(("x25519_ss", dataclasses.replace(s, x25519_ss=Secret(_bump(s.x25519_ss.reveal()))),
                t))
    for i, q in enumerate(s.qkd):
        assert q is not None
        qkd = list(s.qkd)
        qkd[i] = Secret(_bump(q.reveal()))
        out.append((f"qkd[{i}]", dataclasses.replace(s, qkd=tuple(qkd)), t))
        slots = list(t.qkd)
        slots[i] = QkdSlot(slots[i].kms, slots[i].key_id + "x")
        out.append((f"key_id[{i}]", s, dataclasses.replace(t, qkd=tuple(slots))))
        slots = list(t.qkd)
        slots[i] = QkdSlot(slots[i].kms + "x", slots[i].key_id)
        out.append((f"kms[{i}]", s, dataclasses.replace(t, qkd=tuple(slots))))
    for f in dataclasses.fields(t):
        v = getattr(t, f.name)
        if f.name == "qkd":
            continue
        if isinstance(v, bytes):
            nv: object = _bump(v)
        elif isinstance(v, Mode):
            nv = Mode(v % 4 + 1)
        elif isinstance(v, Kind):
            nv = Kind(v % 2 + 1)
        elif isinstance(v, int):
            nv = v ^ 1
        else:
            nv = v + "x"
        out.append((f.name, s, dataclasses.replace(t, **{f.name: nv})))  # type: ignore[arg-type]
    return out


@pytest.mark.fuzz
@settings(max_examples=60, deadline=None)
@given(exchanges())
def test_any_single_change_changes_every_output(ex: tuple[CombinerSecrets, RekeyTranscript]) -> None:
    s, t = ex
    base = _outputs(combine(s, t))
    assert len(set(base)) == len(base)
    for what, s2, t2 in _mutations(s, t):
        changed = _outputs(combine(s2, t2))
        for name, a, b in zip((*OUTPUTS, "key_check"), base, changed, strict=True):
            assert a != b, f"changing {what} left {name} unchanged"


@pytest.mark.fuzz
@settings(max_examples=25, deadline=None)
@given(st.lists(B32, min_size=0, max_size=4), st.sampled_from([Mode.QKD_PQC, Mode.PQC, Mode.QKD]))
def test_both_ends_derive_equal_keys(qkd: list[bytes], mode: Mode) -> None:
    """Each end computes its own ML-KEM / X25519 secret, as in a real exchange."""
    from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

    kem = mlkem.MLKEM768PrivateKey.generate()
    ss_r, ct = kem.public_key().encapsulate()
    ss_i = kem.decapsulate(ct)
    xi, xr = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    raw = gen_vectors.RAW
    t = RekeyTranscript(mode, Kind.ESP, 3, "a", "b", "t", tuple(
        QkdSlot(f"k{i}", f"id{i}") for i in range(len(qkd))), b"ek", ct,
        xi.public_key().public_bytes(*raw), xr.public_key().public_bytes(*raw), 256, 257,
        b"n" * 32, b"m" * 32)
    ki = combine(CombinerSecrets(Secret(ss_i), tuple(map(Secret, qkd)),
                                 Secret(xi.exchange(xr.public_key()))), t)
    kr = combine(CombinerSecrets(Secret(ss_r), tuple(map(Secret, qkd)),
                                 Secret(xr.exchange(xi.public_key()))), t)
    assert _outputs(ki) == _outputs(kr)
    assert confirm_mac(ki.confirm_r, ki.transcript_hash) == confirm_mac(kr.confirm_r,
                                                                         kr.transcript_hash)


@pytest.mark.unit
def test_inconsistent_inputs_are_refused() -> None:
    s, t = CombinerSecrets(None, (None,), Secret(b"x" * 32)), RekeyTranscript(
        Mode.ANY, Kind.WIREGUARD, 1, "a", "b", "t", (QkdSlot("k", "id"),), b"", b"", b"1" * 32,
        b"2" * 32, 0, 0, b"3" * 32, b"4" * 32)
    with pytest.raises(PolicyError):  # key ID present, key absent
        combine(s, t)
    with pytest.raises(PolicyError):  # a 128-bit QKD key
        combine(CombinerSecrets(None, (Secret(b"k" * 16),), Secret(b"x" * 32)), t)
    with pytest.raises(PolicyError):  # ML-KEM secret without a ciphertext
        combine(CombinerSecrets(Secret(b"m" * 32), (Secret(b"k" * 32),), Secret(b"x" * 32)), t)


@pytest.mark.unit
def test_absent_markers_differ_from_each_other_and_from_zero() -> None:
    assert labels.ABSENT_QKD_KEY != labels.ABSENT_MLKEM_SS
    assert bytes(32) not in (labels.ABSENT_QKD_KEY, labels.ABSENT_MLKEM_SS)
