"""Property tests: whatever a KME sends, the parser returns checked keys or KmsProtocolError."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.kms import KmsProtocolError
from gateway.kms.wire import parse_json_object, parse_key_container, parse_status

pytestmark = pytest.mark.fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
key_items = st.fixed_dictionaries({
    "key_ID": st.one_of(st.uuids().map(str), st.text(max_size=40), st.integers()),
    "key": st.one_of(st.binary(min_size=0, max_size=40).map(lambda b: base64.b64encode(b).decode()),
                     st.text(max_size=20), st.none()),
}, optional={"key_extension": json_values})


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bodies_never_crash(body: bytes) -> None:
    try:
        obj = parse_json_object(body, "fuzz")
        parse_key_container(obj, "fuzz", size_bits=256, number=1)
    except KmsProtocolError:
        pass
    with contextlib.suppress(KmsProtocolError):
        parse_status(parse_json_object(body, "fuzz"))


def test_key_id_with_trailing_newline_is_rejected() -> None:
    item = {"key_ID": str(uuid.uuid4()) + "\n", "key": base64.b64encode(b"k" * 32).decode()}
    with pytest.raises(KmsProtocolError, match="UUID"):
        parse_key_container({"keys": [item]}, "x", size_bits=256, number=1)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(key_items, max_size=5), number=st.integers(1, 5),
       size=st.sampled_from([None, 8, 128, 256]))
def test_accepted_containers_satisfy_every_check(items: list[dict[str, object]], number: int,
                                                 size: int | None) -> None:
    try:
        keys = parse_key_container({"keys": items}, "fuzz", size_bits=size, number=number)
    except KmsProtocolError:
        return
    assert len(keys) == number
    assert len({k.key_id for k in keys}) == number
    for k in keys:
        assert str(uuid.UUID(k.key_id)) == k.key_id  # canonical lower-case form
        assert len(k.key) > 0 and (size is None or k.size_bits == size)
    assert len({len(k.key) for k in keys}) == 1


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.uuids().map(str), min_size=1, max_size=4, unique=True),
       returned=st.lists(st.uuids().map(str), min_size=0, max_size=4))
def test_dec_keys_answers_must_match_the_ids_asked(ids: list[str], returned: list[str]) -> None:
    items = [{"key_ID": k, "key": base64.b64encode(b"\x01" * 32).decode()} for k in returned]
    try:
        keys = parse_key_container({"keys": items}, "fuzz", size_bits=None, expected_ids=ids)
    except KmsProtocolError:
        assert sorted(returned) != sorted(ids)
        return
    assert [k.key_id for k in keys] == ids
