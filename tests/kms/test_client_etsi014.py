"""The ETSI 014 client against a conforming mini KME over real mutual TLS on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.kms import Etsi014Client, KeySource, KmsBadRequest, KmsError
from tests.kms.test_client_support import KME_A, SAE_A, SAE_B, MiniKme, client_for, make_pki

pytestmark = pytest.mark.unit


@pytest.fixture
async def kme(tmp_path: Path) -> AsyncIterator[MiniKme]:
    server = MiniKme(make_pki(tmp_path / "pki"))
    await server.start()
    yield server
    await server.stop()


async def test_is_a_key_source(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url) as client:
        assert isinstance(client, KeySource)
        assert client.name == "site-kms"


async def test_status(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url) as client:
        status = await client.status(SAE_B)
    assert status.source_kme_id == KME_A and status.slave_sae_id == SAE_B
    assert status.stored_key_count == 1000 and status.max_key_per_request == 128
    assert kme.requests == [("GET", f"/api/v1/keys/{SAE_B}/status")]


async def test_enc_keys_post_batch_and_dec_keys_roundtrip(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url) as master:
        keys = await master.get_keys(SAE_B, number=64, size=512)
    assert len(keys) == 64 and all(k.size_bits == 512 for k in keys)
    assert len({k.key_id for k in keys}) == 64
    assert kme.requests[-1] == ("POST", f"/api/v1/keys/{SAE_B}/enc_keys")
    assert kme.bodies[-1] == {"number": 64, "size": 512}
    async with client_for(kme.pki, kme.url, sae=SAE_B) as slave:
        wanted = [keys[5].key_id, keys[0].key_id, keys[63].key_id]
        got = await slave.get_keys_by_id(SAE_A, wanted)
    assert [k.key_id for k in got] == wanted  # the order asked, whatever the KME's order
    assert [k.key for k in got] == [keys[5].key, keys[0].key, keys[63].key]
    assert kme.requests[-1] == ("POST", f"/api/v1/keys/{SAE_A}/dec_keys")
    assert kme.bodies[-1] == {"key_IDs": [{"key_ID": k} for k in wanted]}


async def test_enc_keys_extensions_force_post_even_with_use_get(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url, use_get=True) as client:
        await client.get_keys(SAE_B, 2, 256, additional_slave_sae_ids=["SAE_C"],
                              extension_mandatory=[{"abc_route": "x"}],
                              extension_optional=[{"abc_qos": 1}])
    assert kme.requests[-1][0] == "POST"
    assert kme.bodies[-1] == {"number": 2, "size": 256, "additional_slave_SAE_IDs": ["SAE_C"],
                              "extension_mandatory": [{"abc_route": "x"}],
                              "extension_optional": [{"abc_qos": 1}]}


async def test_get_forms_when_configured(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url, use_get=True) as client:
        keys = await client.get_keys(SAE_B, 3, 128)
        assert kme.requests[-1] == ("GET", f"/api/v1/keys/{SAE_B}/enc_keys")
        assert kme.queries[-1] == {"number": "3", "size": "128"}
        one = await client.get_keys_by_id(SAE_A, [keys[0].key_id])
        assert kme.requests[-1] == ("GET", f"/api/v1/keys/{SAE_A}/dec_keys")
        assert kme.queries[-1] == {"key_ID": keys[0].key_id}
        assert one[0].key == keys[0].key
        # Two IDs cannot go in a GET: the standard allows GET for one key ID only.
        await client.get_keys_by_id(SAE_A, [keys[1].key_id, keys[2].key_id])
        assert kme.requests[-1] == ("POST", f"/api/v1/keys/{SAE_A}/dec_keys")


async def test_default_size_and_sae_ids_are_url_encoded(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url) as client:
        keys = await client.get_keys("SAE B/x")
    assert keys[0].size_bits == kme.key_size
    assert kme.bodies[-1] == {"number": 1}
    assert kme.requests[-1][1] == "/api/v1/keys/SAE%20B%2Fx/enc_keys"


async def test_one_kept_alive_connection(kme: MiniKme) -> None:
    peers: set[object] = set()

    async def note_peer(request: web.Request) -> None:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return None

    kme.override = note_peer
    async with client_for(kme.pki, kme.url) as client:
        for _ in range(10):
            await client.get_keys(SAE_B, 1, 256)
    assert len(peers) == 1


async def test_dec_keys_unknown_id_is_not_found(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url, sae=SAE_B) as client:
        with pytest.raises(KmsBadRequest) as info:
            await client.get_keys_by_id(SAE_A, ["6f1d0a52-3c52-4f4e-9d5b-0c3ad1a0f0aa"])
    assert info.value.not_found
    assert "not found" in info.value.server_message
    assert len(kme.requests) == 1  # a 400 is an answer: never repeated


async def test_argument_errors_say_what_to_do(kme: MiniKme) -> None:
    async with client_for(kme.pki, kme.url) as client:
        with pytest.raises(ValueError, match="multiple of 8"):
            await client.get_keys(SAE_B, 1, 100)
        with pytest.raises(ValueError, match="duplicates"):
            await client.get_keys_by_id(SAE_A, ["6f1d0a52-3c52-4f4e-9d5b-0c3ad1a0f0aa"] * 2)
        with pytest.raises(KmsError, match="not a UUID"):
            await client.get_keys_by_id(SAE_A, ["nope"])
    assert kme.requests == []
    with pytest.raises(ValueError, match="https://"):
        Etsi014Client(name="x", url="http://127.0.0.1:1", kme_id=KME_A, ca_file=kme.pki.ca_cert,
                      cert_file=kme.pki.sae_cert(SAE_A), key_file=kme.pki.sae_key(SAE_A))


async def test_closed_client_fails_at_once_without_retrying(kme: MiniKme) -> None:
    client = client_for(kme.pki, kme.url)
    await client.get_keys(SAE_B)
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(KmsError, match="closed"):
        await client.get_keys(SAE_B)
    assert len(kme.requests) == 1
