"""ETSI GS QKD 014 conformance of the embedded KME, over real mutual-TLS HTTPS on loopback.

Every request goes through :class:`tests.kms.conftest.RawSae` (aiohttp + ``ssl``), never through
the product client, so these tests pin the server to the standard on their own.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.kms.sim import (
    MSG_EXT_MANDATORY,
    MSG_KEYS_NOT_FOUND,
    MSG_SIZE_MULTIPLE_OF_8,
    PATH_EXTENSION,
    KmeNetwork,
)
from tests.kms.conftest import (
    KME_A,
    KME_B,
    LOOPBACK,
    SAE_A,
    SAE_B,
    SAE_STRANGER,
    RawSae,
    client_tls_context,
)

pytestmark = pytest.mark.unit

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
STATUS_TYPES: dict[str, type] = {
    "source_KME_ID": str, "target_KME_ID": str, "master_SAE_ID": str, "slave_SAE_ID": str,
    "key_size": int, "stored_key_count": int, "max_key_count": int, "max_key_per_request": int,
    "max_key_size": int, "min_key_size": int, "max_SAE_ID_count": int, "status_extension": dict,
}


def _pair(net: KmeNetwork, raw_sae: Any) -> tuple[RawSae, RawSae]:
    return raw_sae(net, SAE_A, KME_A), raw_sae(net, SAE_B, KME_B)


def _keys(body: dict[str, Any]) -> dict[str, bytes]:
    return {k["key_ID"]: base64.b64decode(k["key"], validate=True) for k in body["keys"]}


# -- Get status ---------------------------------------------------------------------------------
async def test_status_has_every_field_with_its_type(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, headers = await a.request("GET", f"/api/v1/keys/{SAE_B}/status")
    assert status == 200
    assert headers["Content-Type"].split(";")[0] == "application/json"
    assert set(body) == set(STATUS_TYPES)
    for name, typ in STATUS_TYPES.items():
        assert type(body[name]) is typ, name
    assert body["source_KME_ID"] == KME_A and body["target_KME_ID"] == KME_B
    assert body["master_SAE_ID"] == SAE_A and body["slave_SAE_ID"] == SAE_B
    assert body["key_size"] == 256 and body["stored_key_count"] == 1000
    assert body["max_key_count"] == 1000 and body["max_key_per_request"] == 128
    assert body["min_key_size"] == 64 and body["max_key_size"] == 8192
    assert body["max_SAE_ID_count"] == 0
    assert body["status_extension"] == {PATH_EXTENSION: [KME_A, KME_B]}


async def test_status_path_is_url_decoded(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.request("GET", "/api/v1/keys/%53AE%5FB/status")
    assert status == 200 and body["slave_SAE_ID"] == SAE_B


@pytest.mark.parametrize(("slave", "message"), [
    ("SAE_NOBODY", "unknown slave_SAE_ID 'SAE_NOBODY': no SAE of that ID is registered"),
    (SAE_A, "slave_SAE_ID 'SAE_A' is attached to this KME (KME_A); keys are only issued "
            "between SAEs of different KMEs"),
])
async def test_status_bad_slave(kme_pair: KmeNetwork, raw_sae: Any, slave: str,
                                message: str) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.request("GET", f"/api/v1/keys/{slave}/status")
    assert (status, body) == (400, {"message": message})


# -- Get key ------------------------------------------------------------------------------------
async def test_enc_keys_post_empty_body_gives_one_default_key(
        kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.request("POST", f"/api/v1/keys/{SAE_B}/enc_keys")
    assert status == 200
    assert set(body) == {"keys"} and len(body["keys"]) == 1
    item = body["keys"][0]
    assert set(item) == {"key_ID", "key", "key_extension"}
    assert UUID_RE.match(item["key_ID"])
    assert len(base64.b64decode(item["key"], validate=True)) == 32
    assert item["key_extension"] == {PATH_EXTENSION: [KME_A, KME_B]}
    assert kme_pair.link_stock(KME_A, KME_B) == 999


async def test_enc_keys_get_number_and_size(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.request(
        "GET", f"/api/v1/keys/{SAE_B}/enc_keys", params={"number": "3", "size": "512"})
    assert status == 200
    keys = _keys(body)
    assert len(keys) == 3 and all(len(k) == 64 for k in keys.values())
    assert len(set(keys.values())) == 3
    assert kme_pair.link_stock(KME_A, KME_B) == 1000 - 3 * 2  # a 512-bit key costs two


async def test_enc_keys_get_without_parameters(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.request("GET", f"/api/v1/keys/{SAE_B}/enc_keys")
    assert status == 200 and len(body["keys"]) == 1


async def test_enc_keys_optional_extension_is_ignored(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.enc_keys(SAE_B, number=1, extension_optional=[{"abc_route": "x"}],
                                       extension_mandatory=[], additional_slave_SAE_IDs=[])
    assert status == 200 and len(body["keys"]) == 1


ENC_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"size": 100}, MSG_SIZE_MULTIPLE_OF_8),
    ({"size": 56}, "size 56 is outside [min_key_size 64, max_key_size 8192]"),
    ({"size": 8200}, "size 8200 is outside [min_key_size 64, max_key_size 8192]"),
    ({"number": 129}, "number 129 exceeds max_key_per_request 128"),
    ({"number": 0}, "number shall be a positive integer"),
    ({"number": "2"}, "number shall be an integer"),
    ({"number": True}, "number shall be an integer"),
    ({"size": 256.0}, "size shall be an integer"),
    ({"extension_mandatory": [{"abc_route": "x"}]}, MSG_EXT_MANDATORY),
    ({"extension_mandatory": {"abc_route": "x"}}, "extension_mandatory shall be an array of objects"),
    ({"extension_optional": ["x"]}, "extension_optional shall be an array of objects"),
    ({"additional_slave_SAE_IDs": [SAE_A]},
     "additional_slave_SAE_IDs lists 1 SAE IDs, more than max_SAE_ID_count 0 "
     "(this KME does not support key multicast)"),
    ({"additional_slave_SAE_IDs": "SAE_X"},
     "additional_slave_SAE_IDs shall be an array of strings"),
    ({"numbr": 1}, "unknown field(s) in Key request: numbr"),
]


@pytest.mark.parametrize(("body", "message"), ENC_ERRORS)
async def test_enc_keys_errors(kme_pair: KmeNetwork, raw_sae: Any, body: dict[str, Any],
                               message: str) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, answer, headers = await a.enc_keys(SAE_B, **body)
    assert status == 400
    assert answer["message"] == message
    assert set(answer) <= {"message", "details"}
    assert headers["Content-Type"].split(";")[0] == "application/json"
    assert kme_pair.link_stock(KME_A, KME_B) == 1000  # nothing consumed


async def test_enc_keys_mandatory_extension_details(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    _, body, _ = await a.enc_keys(SAE_B, extension_mandatory=[{"abc_route": 1}, {"abc_qos": 2}])
    assert body == {"message": MSG_EXT_MANDATORY,
                    "details": [{"unsupported": ["abc_route", "abc_qos"]}]}


@pytest.mark.parametrize(("data", "message"), [
    ("{not json", "Key request is not valid UTF-8 JSON"),
    ("[1, 2]", "Key request shall be a JSON object"),
    (b"\xff\xfe", "Key request is not valid UTF-8 JSON"),
])
async def test_enc_keys_malformed_body(kme_pair: KmeNetwork, raw_sae: Any, data: Any,
                                       message: str) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.request("POST", f"/api/v1/keys/{SAE_B}/enc_keys", data=data)
    assert (status, body) == (400, {"message": message})


async def test_enc_keys_get_rejects_other_parameters(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.request("GET", f"/api/v1/keys/{SAE_B}/enc_keys",
                                      params={"number": "1", "extension_mandatory": "x"})
    assert status == 400
    assert body["message"] == ("GET enc_keys takes only number and size, not "
                               "extension_mandatory; send other parameters in a POST Key request")
    status, body, _ = await a.request("GET", f"/api/v1/keys/{SAE_B}/enc_keys",
                                      params={"size": "abc"})
    assert (status, body) == (400, {"message": "size shall be an integer"})


# -- Get key with key IDs -----------------------------------------------------------------------
async def test_keys_equal_at_both_ends_and_fetched_once(kme_pair: KmeNetwork,
                                                        raw_sae: Any) -> None:
    a, b = _pair(kme_pair, raw_sae)
    _, body, _ = await a.enc_keys(SAE_B, number=3)
    master_keys = _keys(body)
    status, got, _ = await b.dec_keys(SAE_A, list(master_keys))
    assert status == 200
    assert _keys(got) == master_keys
    assert [k["key_extension"] for k in got["keys"]] == [{PATH_EXTENSION: [KME_A, KME_B]}] * 3
    status, again, _ = await b.dec_keys(SAE_A, list(master_keys)[:1])
    assert (status, again["message"]) == (400, MSG_KEYS_NOT_FOUND)


async def test_dec_keys_get_single_key_id(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, b = _pair(kme_pair, raw_sae)
    _, body, _ = await a.enc_keys(SAE_B)
    (key_id, key), = _keys(body).items()
    path = f"/api/v1/keys/{SAE_A}/dec_keys"
    status, got, _ = await b.request("GET", path, params={"key_ID": key_id.upper()})
    assert status == 200 and _keys(got) == {key_id: key}
    status, got, _ = await b.request("GET", path, params={"key_ID": key_id})
    assert (status, got["message"]) == (400, MSG_KEYS_NOT_FOUND)


@pytest.mark.parametrize("params", [[], [("key_ID", "a"), ("key_ID", "b")], [("number", "1")]])
async def test_dec_keys_get_rejects_other_forms(kme_pair: KmeNetwork, raw_sae: Any,
                                                params: list[tuple[str, str]]) -> None:
    _, b = _pair(kme_pair, raw_sae)
    status, body, _ = await b.request("GET", f"/api/v1/keys/{SAE_A}/dec_keys", params=params)
    assert status == 400
    assert body["message"].startswith("GET dec_keys takes exactly one key_ID query parameter")


async def test_dec_keys_unknown_id_consumes_nothing(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, b = _pair(kme_pair, raw_sae)
    _, body, _ = await a.enc_keys(SAE_B, number=2)
    ids = list(_keys(body))
    ghost = str(uuid.uuid4())
    status, err, _ = await b.dec_keys(SAE_A, [*ids, ghost])
    assert status == 400
    assert err == {"message": MSG_KEYS_NOT_FOUND, "details": [{"key_ID": ghost}]}
    status, err, _ = await b.dec_keys(SAE_A, ["not-a-uuid"])
    assert (status, err["message"]) == (400, MSG_KEYS_NOT_FOUND)
    status, got, _ = await b.dec_keys(SAE_A, ids)
    assert status == 200 and _keys(got) == _keys(body)


async def test_dec_keys_wrong_master_is_not_found(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, b = _pair(kme_pair, raw_sae)
    _, body, _ = await a.enc_keys(SAE_B)
    status, err, _ = await b.dec_keys("SAE_OTHER", list(_keys(body)))
    assert (status, err["message"]) == (400, MSG_KEYS_NOT_FOUND)


@pytest.mark.parametrize(("body", "message"), [
    ({}, 'key_IDs shall be a non-empty array of {"key_ID": ...} objects'),
    ({"key_IDs": []}, 'key_IDs shall be a non-empty array of {"key_ID": ...} objects'),
    ({"key_IDs": ["x"]}, "every key_IDs item shall be an object with a string key_ID"),
    ({"key_IDs": [{"key_ID": 5}]}, "every key_IDs item shall be an object with a string key_ID"),
    ({"key_IDs": [{"key_ID": "x", "y": 1}]}, "key_IDs items take only key_ID and key_ID_extension"),
    ({"keys": []}, "unknown field(s) in Key IDs: keys"),
])
async def test_dec_keys_malformed(kme_pair: KmeNetwork, raw_sae: Any, body: dict[str, Any],
                                  message: str) -> None:
    _, b = _pair(kme_pair, raw_sae)
    status, err, _ = await b.request("POST", f"/api/v1/keys/{SAE_A}/dec_keys", json=body)
    assert (status, err) == (400, {"message": message})


async def test_dec_keys_duplicate_ids(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, b = _pair(kme_pair, raw_sae)
    _, body, _ = await a.enc_keys(SAE_B)
    key_id = next(iter(_keys(body)))
    status, err, _ = await b.dec_keys(SAE_A, [key_id, key_id])
    assert (status, err) == (400, {"message": "key_IDs lists the same key_ID more than once"})


# -- 401 ----------------------------------------------------------------------------------------
async def test_dec_keys_by_other_sae_is_401_and_key_survives(
        kme_pki_dir: Path, raw_sae: Any) -> None:
    async with KmeNetwork(kme_pki_dir, {KME_A: (LOOPBACK, 0), KME_B: (LOOPBACK, 0)},
                          [(KME_A, KME_B)],
                          {SAE_A: KME_A, SAE_B: KME_B, "SAE_C": KME_B}) as net:
        a, b = _pair(net, raw_sae)
        c = raw_sae(net, "SAE_C", KME_B)
        _, body, _ = await a.enc_keys(SAE_B)
        ids = list(_keys(body))
        status, err, _ = await c.dec_keys(SAE_A, ids)
        assert (status, err) == (401, None)
        status, got, _ = await b.dec_keys(SAE_A, ids)
        assert status == 200 and _keys(got) == _keys(body)


@pytest.mark.parametrize(("sae", "kme"), [(SAE_STRANGER, KME_A), (SAE_B, KME_A)])
async def test_unregistered_or_foreign_sae_is_401(kme_pair: KmeNetwork, raw_sae: Any,
                                                  sae: str, kme: str) -> None:
    helper = raw_sae(kme_pair, sae, kme)
    for method, path in [("GET", f"/api/v1/keys/{SAE_B}/status"),
                         ("POST", f"/api/v1/keys/{SAE_B}/enc_keys"),
                         ("GET", f"/api/v1/keys/{SAE_B}/dec_keys?key_ID={uuid.uuid4()}")]:
        status, body, _ = await helper.request(method, path)
        assert (status, body) == (401, None)
    assert kme_pair.link_stock(KME_A, KME_B) == 1000


async def test_no_client_certificate_fails_handshake(kme_pair: KmeNetwork) -> None:
    ctx = ssl.create_default_context(cafile=str(kme_pair.pki.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=aiohttp.ClientTimeout(total=5)) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(kme_pair.url(KME_A) + f"/api/v1/keys/{SAE_B}/status") as r:
                await r.read()


async def test_tls_1_2_client_is_served_and_kme_id_in_certificate(kme_pair: KmeNetwork) -> None:
    ctx = client_tls_context(kme_pair, SAE_A)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    port = kme_pair.port(KME_A)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(LOOPBACK, port, ssl=ctx), timeout=5)
    try:
        tls = writer.get_extra_info("ssl_object")
        assert tls.version() == "TLSv1.2"
        assert ("URI", f"urn:etsi:qkd:kme:{KME_A}") in tls.getpeercert()["subjectAltName"]
        writer.write(f"GET /api/v1/keys/{SAE_B}/status HTTP/1.1\r\nHost: x\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()


# -- other HTTP ---------------------------------------------------------------------------------
async def test_unknown_route_and_method(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, _ = _pair(kme_pair, raw_sae)
    status, body, _ = await a.request("GET", "/api/v2/keys")
    assert (status, body) == (404, {"message": "no such resource: /api/v2/keys"})
    status, body, headers = await a.request("PUT", f"/api/v1/keys/{SAE_B}/enc_keys")
    assert status == 405 and body == {"message": "method PUT not allowed here; use GET or POST"}
    assert headers["Allow"] == "GET,POST"
