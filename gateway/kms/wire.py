"""ETSI GS QKD 014 wire formats: strict where it matters, tolerant where it is harmless.

Strict (a violation raises :class:`KmsProtocolError` and no key is used): valid JSON object,
valid base64, every key exactly the size asked, canonical UUID key IDs, no duplicate IDs,
exactly the number of keys asked, dec_keys returns exactly the IDs asked.

Tolerated (seen in public KMEs, harmless): ``target_KME_ID`` and other IDs as integers, ``Keys``
instead of ``keys``, extra fields, a missing or odd ``Content-Type``, error bodies that are HTML
or a web framework's own JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

from gateway.keymaterial import Secret
from gateway.kms.errors import KmsProtocolError
from gateway.kms.types import KeyStatus, QKDKey

__all__ = [
    "MAX_BODY_BYTES",
    "STOCK_UNKNOWN",
    "canonical_key_id",
    "error_text",
    "parse_json_object",
    "parse_key_container",
    "parse_status",
    "says_not_found",
]

# A status_extension member set by backends that cannot report a key stock (SKIP): consumers
# must then treat stored_key_count as unknown rather than as zero.
STOCK_UNKNOWN = "qkdgw_stock_unknown"

# 128 keys of 64 kbit in base64 plus JSON overhead is ~1.4 MB; anything far larger is not a
# key container and is refused before it is parsed.
MAX_BODY_BYTES = 4 * 1024 * 1024

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Wordings real KMEs and their web frameworks use for unknown key IDs: "Key not found", "keys
# do not exist", "key_ID does not exist", "doesn't exist", "non-existent key", "unknown key ID",
# "no such key", "no keys found for", "key IDs not available", "invalid key ID(s)". ("keys not
# available" alone is left out: KMEs say that about an empty stock, too.)
_NOT_FOUND = re.compile(
    r"not\s+(be\s+)?found|(do|does|did)\s*(n['\u2019]?t|\s+not)\s+exist|non-?existent|"
    r"unknown\s+key|no\s+such\s+key|no\s+keys?\s+(found|with|for|matching)|"
    r"key[\s_-]?ids?\s+(is\s+|are\s+)?not\s+available|invalid\s+key[\s_-]?ids?",
    re.IGNORECASE)
_STATUS_INTS = ("key_size", "stored_key_count", "max_key_count", "max_key_per_request",
                "max_key_size", "min_key_size", "max_SAE_ID_count")


def canonical_key_id(value: object) -> str:
    """The lower-case canonical text of a UUID key ID, or :class:`KmsProtocolError`."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise KmsProtocolError(f"key_ID {str(value)[:64]!r} is not a UUID (8-4-4-4-12 hex)")
    return value.lower()


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object whatever the Content-Type said (some KMEs send text/plain)."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The position, not the body: the body of a key answer holds key material.
        where = getattr(exc, "pos", getattr(exc, "start", "?"))
        raise KmsProtocolError(
            f"{what}: answer is not UTF-8 JSON ({type(exc).__name__} at byte {where})") from None
    if not isinstance(obj, dict):
        raise KmsProtocolError(f"{what}: answer is JSON but not an object")
    return obj


def _id_text(obj: dict[str, Any], name: str, what: str) -> str:
    value = obj.get(name)
    # Some KMEs send numeric KME IDs; an ID is a name either way.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise KmsProtocolError(f"{what}: {name} missing or not a string")
    return str(value)


def parse_status(obj: dict[str, Any]) -> KeyStatus:
    """A :class:`KeyStatus` from a Status object."""
    what = "status"
    ints: dict[str, int] = {}
    for name in _STATUS_INTS:
        value = obj.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise KmsProtocolError(f"{what}: {name} missing or not a non-negative integer")
        ints[name] = value
    extension = obj.get("status_extension")
    return KeyStatus(
        source_kme_id=_id_text(obj, "source_KME_ID", what),
        target_kme_id=_id_text(obj, "target_KME_ID", what),
        master_sae_id=_id_text(obj, "master_SAE_ID", what),
        slave_sae_id=_id_text(obj, "slave_SAE_ID", what),
        key_size=ints["key_size"],
        stored_key_count=ints["stored_key_count"],
        max_key_count=ints["max_key_count"],
        max_key_per_request=ints["max_key_per_request"],
        max_key_size=ints["max_key_size"],
        min_key_size=ints["min_key_size"],
        max_sae_id_count=ints["max_SAE_ID_count"],
        status_extension=extension if isinstance(extension, dict) else None,
    )


def _optional_obj(item: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = item.get(name)
    return value if isinstance(value, dict) else None


def parse_key_container(
    obj: dict[str, Any],
    what: str,
    *,
    size_bits: int | None,
    number: int | None = None,
    expected_ids: Sequence[str] | None = None,
) -> list[QKDKey]:
    """Keys from a Key container, checked against the request.

    ``size_bits`` None means "the KME's default size": then all keys must merely agree.
    ``expected_ids`` (canonical) makes the answer match those IDs exactly, returned in that order.
    """
    items = obj.get("keys", obj.get("Keys"))
    if not isinstance(items, list):
        raise KmsProtocolError(f"{what}: answer has no 'keys' list")
    want = len(expected_ids) if expected_ids is not None else number
    if want is not None and len(items) != want:
        raise KmsProtocolError(f"{what}: asked for {want} keys, KME returned {len(items)}")
    keys: dict[str, QKDKey] = {}
    lengths: set[int] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise KmsProtocolError(f"{what}: keys[{index}] is not an object")
        key_id = canonical_key_id(item.get("key_ID"))
        if key_id in keys:
            raise KmsProtocolError(f"{what}: key_ID {key_id} appears twice in one answer")
        encoded = item.get("key")
        try:
            if not isinstance(encoded, str):
                raise ValueError
            raw = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise KmsProtocolError(f"{what}: key {key_id} is not valid base64") from None
        if size_bits is not None and len(raw) * 8 != size_bits:
            # A short key is not a harmless deviation: it silently weakens the session key.
            raise KmsProtocolError(
                f"{what}: key {key_id} has {len(raw) * 8} bits, {size_bits} were asked")
        if not raw:
            raise KmsProtocolError(f"{what}: key {key_id} is empty")
        lengths.add(len(raw))
        keys[key_id] = QKDKey(key_id, Secret(raw), _optional_obj(item, "key_ID_extension"),
                              _optional_obj(item, "key_extension"))
    if len(lengths) > 1:
        raise KmsProtocolError(f"{what}: keys of different sizes in one answer")
    if expected_ids is None:
        return list(keys.values())
    missing = [k for k in expected_ids if k not in keys]
    if missing or len(keys) != len(expected_ids):
        raise KmsProtocolError(
            f"{what}: KME returned other key IDs than asked (missing {missing[:4]})")
    return [keys[k] for k in expected_ids]


def error_text(body: bytes, limit: int = 200) -> str:
    """A short printable excerpt of an error answer: the Error ``message`` if there is one.

    Error answers never carry key material, but they are truncated and stripped of control
    characters so a hostile KME cannot forge log lines.
    """
    text = ""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if isinstance(obj, dict):
        for name in ("message", "detail", "error", "msg"):
            if isinstance(obj.get(name), str | int):
                text = str(obj[name])
                break
        else:
            text = json.dumps(obj)[:limit]
    elif obj is None and body:
        text = "non-JSON body" if b"<" in body[:64] else body[:limit].decode("utf-8", "replace")
    clean = "".join(ch if ch.isprintable() else " " for ch in text)
    return clean[:limit]


def says_not_found(body: bytes) -> bool:
    """Whether an error answer says the key IDs are unknown (also for 500s from frameworks)."""
    return bool(_NOT_FOUND.search(body[:2048].decode("utf-8", "replace")))
