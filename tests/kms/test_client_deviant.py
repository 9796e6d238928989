"""Deviant and hostile KME answers, faults and TLS failures, over real mutual TLS."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from gateway.kms import (
    KmeIdentityMismatch,
    KmsBadRequest,
    KmsConnectionError,
    KmsIndeterminate,
    KmsProtocolError,
    KmsTimeout,
    KmsTlsError,
    KmsUnauthorized,
    KmsUnavailable,
    RetryPolicy,
)
from tests.kms.test_client_support import (
    KME_B,
    SAE_A,
    SAE_B,
    MiniKme,
    client_for,
    leak_forms,
    make_pki,
)

pytestmark = pytest.mark.unit
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)


@pytest.fixture
async def kme(tmp_path: Path) -> AsyncIterator[MiniKme]:
    server = MiniKme(make_pki(tmp_path / "pki"))
    await server.start()
    yield server
    await server.stop()


def answer(obj: Any, status: int = 200, content_type: str = "application/json") -> Any:
    import json

    async def override(request: web.Request) -> web.StreamResponse:
        return web.Response(body=json.dumps(obj).encode(), status=status,
                            content_type=content_type)
    return override


def key_item(raw: bytes, key_id: str | None = None) -> dict[str, str]:
    return {"key_ID": key_id or str(uuid.uuid4()), "key": base64.b64encode(raw).decode()}


# -- tolerated deviations -------------------------------------------------------------------

async def test_tolerates_Keys_extra_fields_text_plain_and_upper_case_ids(kme: MiniKme) -> None:
    kid = str(uuid.uuid4()).upper()
    item = {**key_item(os.urandom(32), kid), "vendor_field": 7}
    kme.override = answer({"Keys": [item], "extra": {}}, content_type="text/plain")
    async with client_for(kme.pki, kme.url) as client:
        keys = await client.get_keys(SAE_B, 1, 256)
    assert keys[0].key_id == kid.lower()


async def test_tolerates_integer_kme_ids_in_status(kme: MiniKme) -> None:
    kme.override = answer({
        "source_KME_ID": 1, "target_KME_ID": 2, "master_SAE_ID": SAE_A, "slave_SAE_ID": SAE_B,
        "key_size": 256, "stored_key_count": 5, "max_key_count": 10, "max_key_per_request": 4,
        "max_key_size": 512, "min_key_size": 64, "max_SAE_ID_count": 0, "x": None})
    async with client_for(kme.pki, kme.url) as client:
        status = await client.status(SAE_B)
    assert (status.source_kme_id, status.target_kme_id) == ("1", "2")


async def test_framework_500_for_unknown_id_is_not_found(kme: MiniKme) -> None:
    kme.override = answer({"timestamp": "x", "status": 500, "error": "Internal Server Error",
                           "message": "Key not found", "path": "/api"}, status=500)
    async with client_for(kme.pki, kme.url, sae=SAE_B) as client:
        with pytest.raises(KmsBadRequest) as info:
            await client.get_keys_by_id(SAE_A, [str(uuid.uuid4())])
    assert info.value.not_found and len(kme.requests) == 1


async def test_401_with_html_body(kme: MiniKme) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html><body>401 Unauthorized</body></html>", status=401,
                            content_type="text/html")
    kme.override = html
    async with client_for(kme.pki, kme.url) as client:
        with pytest.raises(KmsUnauthorized, match="401"):
            await client.get_keys(SAE_B)
    assert len(kme.requests) == 1


async def test_400_carries_the_server_message(kme: MiniKme) -> None:
    kme.override = answer({"message": "size shall be a multiple of 8"}, status=400)
    async with client_for(kme.pki, kme.url) as client:
        with pytest.raises(KmsBadRequest) as info:
            await client.get_keys(SAE_B, 1, 256)
    assert info.value.server_message == "size shall be a multiple of 8"
    assert not info.value.not_found


# -- rejected answers -----------------------------------------------------------------------

REJECTED = {
    "short key (96 of 104 bits)": ({"keys": [key_item(os.urandom(12))]}, 104, "bits"),
    "bad base64": ({"keys": [{"key_ID": str(uuid.uuid4()), "key": "@@@="}]}, 256, "base64"),
    "non-uuid id": ({"keys": [key_item(os.urandom(32), "key-1")]}, 256, "UUID"),
    "too few keys": ({"keys": []}, 256, "asked for 1"),
    "not json": (None, 256, "JSON"),
    "no keys list": ({"key": []}, 256, "no 'keys'"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
async def test_rejects_malformed_enc_keys(kme: MiniKme, case: str) -> None:
    body, size, match = REJECTED[case]
    if body is None:
        async def broken(request: web.Request) -> web.StreamResponse:
            return web.Response(text="{nope", content_type="application/json")
        kme.override = broken
    else:
        kme.override = answer(body)
    async with client_for(kme.pki, kme.url) as client:
        with pytest.raises(KmsProtocolError, match=match):
            await client.get_keys(SAE_B, 1, size)
    assert len(kme.requests) == 1  # a malformed 200 is not retried: the KME is broken


async def test_rejects_duplicate_ids_and_wrong_dec_ids(kme: MiniKme) -> None:
    kid = str(uuid.uuid4())
    kme.override = answer({"keys": [key_item(os.urandom(32), kid)] * 2})
    async with client_for(kme.pki, kme.url) as client:
        with pytest.raises(KmsProtocolError, match="twice"):
            await client.get_keys(SAE_B, 2, 256)
        kme.override = answer({"keys": [key_item(os.urandom(32))]})
        with pytest.raises(KmsProtocolError, match="other key IDs"):
            await client.get_keys_by_id(SAE_A, [kid])


# -- retries, timeouts, lost answers ---------------------------------------------------------

async def test_503_is_retried_for_enc_keys_then_raised(kme: MiniKme) -> None:
    kme.override = answer({"message": "Error on server side"}, status=503)
    async with client_for(kme.pki, kme.url, retry=FAST) as client:
        with pytest.raises(KmsUnavailable, match="503"):
            await client.get_keys(SAE_B)
        assert len(kme.requests) == 3
        # dec_keys: the KME answered, so nothing is repeated
        with pytest.raises(KmsUnavailable):
            await client.get_keys_by_id(SAE_A, [str(uuid.uuid4())])
        assert len(kme.requests) == 4


async def test_503_then_success(kme: MiniKme) -> None:
    calls = 0

    async def flaky(request: web.Request) -> web.StreamResponse | None:
        nonlocal calls
        calls += 1
        return web.json_response({"message": "busy"}, status=503) if calls < 3 else None
    kme.override = flaky
    async with client_for(kme.pki, kme.url, retry=FAST) as client:
        keys = await client.get_keys(SAE_B, 4, 256)
    assert len(keys) == 4 and calls == 3


async def test_timeout_enc_keys_retried_dec_keys_indeterminate(kme: MiniKme) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.6)  # longer than the client's 0.3 s, short for the teardown
        return web.json_response({})
    kme.override = stall
    async with client_for(kme.pki, kme.url, retry=FAST, timeout=0.3) as client:
        with pytest.raises(KmsTimeout, match=r"0\.3 s"):
            await client.get_keys(SAE_B)
        assert len(kme.requests) == 3
        with pytest.raises(KmsIndeterminate, match="abort this rekey"):
            await client.get_keys_by_id(SAE_A, [str(uuid.uuid4())])
        assert len(kme.requests) == 4


async def test_dec_keys_answer_lost_after_consumption_is_indeterminate(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url, retry=FAST) as master:
        keys = await master.get_keys(SAE_B, 2, 256)

    async def consume_then_drop(request: web.Request) -> web.StreamResponse:
        for item in (await request.json())["key_IDs"]:
            kme.issued.pop(item["key_ID"])
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    kme.override = consume_then_drop
    async with client_for(kme.pki, kme.url, sae=SAE_B, retry=FAST) as slave:
        with pytest.raises(KmsIndeterminate):
            await slave.get_keys_by_id(SAE_A, [k.key_id for k in keys])
    assert [r[1].rsplit("/", 1)[1] for r in kme.requests] == ["enc_keys", "dec_keys"]


async def test_dec_keys_retried_when_connect_fails_then_raises(kme: MiniKme) -> None:
    await kme.stop()
    async with client_for(kme.pki, kme.url, retry=FAST) as client:
        with pytest.raises(KmsConnectionError, match="cannot connect"):
            await client.get_keys_by_id(SAE_A, [str(uuid.uuid4())])


async def test_dec_keys_recovers_when_kme_comes_back(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url) as master:
        keys = await master.get_keys(SAE_B, 1, 256)
    port = kme.port
    await kme.stop()
    policy = RetryPolicy(attempts=10, base_delay=0.05, max_delay=0.1)
    async with client_for(kme.pki, kme.url, sae=SAE_B, retry=policy) as slave:
        task = asyncio.create_task(slave.get_keys_by_id(SAE_A, [keys[0].key_id]))
        await asyncio.sleep(0.15)
        await kme.start(port)
        got = await task
    assert got[0].key == keys[0].key


# -- TLS and KME identity ---------------------------------------------------------------------

async def test_kme_id_mismatch_sends_no_request(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url, kme_id=KME_B) as client:
        for call in (client.status(SAE_B), client.get_keys(SAE_B),
                     client.get_keys_by_id(SAE_A, [str(uuid.uuid4())])):
            with pytest.raises(KmeIdentityMismatch, match="KME_B"):
                await call
    assert kme.requests == []


async def test_wrong_ca_sends_no_request(kme: MiniKme, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    async with client_for(other, kme.url) as client:
        with pytest.raises(KmsTlsError, match="certificate"):
            await client.status(SAE_B)
    assert kme.requests == []


async def test_client_cert_from_foreign_ca_is_refused(kme: MiniKme, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    from gateway.kms import Etsi014Client
    client = Etsi014Client(name="x", url=kme.url, kme_id="KME_A", ca_file=kme.pki.ca_cert,
                           cert_file=other.sae_cert(SAE_A), key_file=other.sae_key(SAE_A),
                           retry=FAST, timeout=2.0)
    async with client:
        # TLS 1.3 reports the refusal after the handshake, as a closed connection.
        with pytest.raises((KmsTlsError, KmsConnectionError), match="certificate"):
            await client.status(SAE_B)
    assert kme.requests == []


# -- key bytes never leave as text -------------------------------------------------------------

async def test_no_key_bytes_in_logs_or_errors(kme: MiniKme, caplog: pytest.LogCaptureFixture,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with client_for(kme.pki, kme.url, retry=FAST) as client:
            keys = await client.get_keys(SAE_B, 8, 256)
            texts += [repr(keys), str(keys[0]), repr(keys[0].key)]
            got = await client.get_keys_by_id(SAE_A, [keys[0].key_id])
            texts.append(repr(got))
            short = os.urandom(12)
            kme.served.append(short)
            kme.override = answer({"keys": [key_item(short)]})
            with pytest.raises(KmsProtocolError) as info:
                await client.get_keys(SAE_B, 1, 256)
            texts.append(str(info.value))
    assert logs, "the client should log its requests"
    out = capsys.readouterr()
    blob = "\n".join([*texts, repr(logs), caplog.text, out.out, out.err])
    assert keys[0].key_id in blob  # key IDs are public and do appear
    for raw in kme.served:
        for form in leak_forms(raw):
            assert form not in blob


# -- hardening after the external review (issue 9) ------------------------------------------

async def test_a_timeout_above_five_seconds_is_not_rounded_up_to_a_whole_second(
        kme: MiniKme) -> None:
    """aiohttp rounds timeouts above 5 s up to the next whole second of the loop clock; the
    request is started just after a half second so that rounding would add ~0.95 s."""
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})
    kme.override = stall
    loop = asyncio.get_running_loop()
    timeout = 5.5
    async with client_for(kme.pki, kme.url, retry=FAST, timeout=timeout) as client:
        while not 0.52 <= loop.time() % 1 < 0.60:
            await asyncio.sleep(0.005)
        started = loop.time()
        with pytest.raises(KmsIndeterminate):
            await client.get_keys_by_id(SAE_A, [str(uuid.uuid4())])
        elapsed = loop.time() - started
        release.set()
    # (loop.time() + 5.5) lands ~0.05 s past a whole second: rounding up would give ~6.45 s.
    assert timeout <= elapsed < timeout + 0.4, elapsed


async def test_401_keeps_the_kme_message_and_names_both_likely_causes(kme: MiniKme) -> None:
    kme.override = answer({"message": "Keys do not exist for this SAE"}, status=401)
    async with client_for(kme.pki, kme.url, sae=SAE_B) as client:
        with pytest.raises(KmsUnauthorized) as info:
            await client.get_keys_by_id(SAE_A, [str(uuid.uuid4())])
    text = str(info.value)
    assert "Keys do not exist for this SAE" in text
    assert "certificate" in text and "key IDs are unknown" in text
    assert info.value.server_message == "Keys do not exist for this SAE"
    assert info.value.not_found


@pytest.mark.parametrize(("status", "message"), [
    (400, "Keys do not exist"),
    (400, "key_ID 0b3c... does not exist"),
    (400, "The requested key doesn't exist"),
    (400, "non-existent key ID"),
    (400, "No keys found for the given key_IDs"),
    (400, "Requested key IDs are not available"),
    (500, "Keys do not exist"),
])
async def test_not_found_wordings_of_real_kmes_are_recognised(kme: MiniKme, status: int,
                                                               message: str) -> None:
    kme.override = answer({"message": message}, status=status)
    async with client_for(kme.pki, kme.url, sae=SAE_B) as client:
        with pytest.raises(KmsBadRequest) as info:
            await client.get_keys_by_id(SAE_A, [str(uuid.uuid4())])
    assert info.value.not_found, message
    assert info.value.server_message == message


async def test_an_empty_stock_is_not_taken_for_unknown_keys(kme: MiniKme) -> None:
    kme.override = answer({"message": "keys not available: stock exhausted"}, status=400)
    async with client_for(kme.pki, kme.url) as client:
        with pytest.raises(KmsBadRequest) as info:
            await client.get_keys(SAE_B, 1, 256)
    assert not info.value.not_found
