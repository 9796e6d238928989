"""SKIP (draft-cisco-skip) endpoints of the embedded KME, over its mutual-TLS listener."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.kms.sim import KmeNetwork
from tests.kms.conftest import KME_A, KME_B, KME_R, SAE_A, SAE_B, SAE_STRANGER

pytestmark = pytest.mark.unit
HEX = re.compile(r"^[0-9a-f]+$")


async def test_capabilities(kme_chain: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_chain, SAE_A, KME_A)
    status, body, _ = await a.request("GET", "/capabilities")
    assert status == 200
    assert body == {"entropy": True, "key": True, "algorithm": "qkd", "localSystemID": KME_A,
                    "remoteSystemID": [KME_B, KME_R]}


async def test_key_then_key_by_id_once(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, b = raw_sae(kme_pair, SAE_A, KME_A), raw_sae(kme_pair, SAE_B, KME_B)
    status, new, _ = await a.request("GET", "/key", params={"remoteSystemID": KME_B,
                                                            "size": "512"})
    assert status == 200 and set(new) == {"keyId", "key"}
    assert HEX.match(new["keyId"]) and HEX.match(new["key"]) and len(new["key"]) == 128
    assert kme_pair.link_stock(KME_A, KME_B) == 998
    path = f"/key/{new['keyId']}"
    status, wrong, _ = await b.request("GET", path, params={"remoteSystemID": KME_R})
    assert status == 404 and wrong["message"].startswith("key ")
    status, got, _ = await b.request("GET", path, params={"remoteSystemID": KME_A})
    assert (status, got) == (200, new)
    status, again, _ = await b.request("GET", path, params={"remoteSystemID": KME_A})
    assert status == 404
    assert again == {"message": f"key {new['keyId']} from remote system {KME_A} not found"}


async def test_default_size_and_relay(kme_chain: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_chain, SAE_A, KME_A)
    status, new, _ = await a.request("GET", "/key", params={"remoteSystemID": KME_B})
    assert status == 200 and len(new["key"]) == 64
    assert kme_chain.link_stock(KME_A, KME_R) == kme_chain.link_stock(KME_R, KME_B) == 999


@pytest.mark.parametrize(("params", "status", "message"), [
    ({}, 400, "remoteSystemID query parameter is required"),
    ({"remoteSystemID": "KME_X"}, 400, "unknown remoteSystemID 'KME_X'"),
    ({"remoteSystemID": KME_A}, 400, "unknown remoteSystemID 'KME_A'"),
    ({"remoteSystemID": KME_B, "size": "100"}, 400, "size shall be a multiple of 8"),
    ({"remoteSystemID": KME_B, "size": "x"}, 400, "size shall be an integer"),
    ({"remoteSystemID": KME_B, "number": "2"}, 400, "unexpected query parameter(s): number"),
])
async def test_key_errors(kme_pair: KmeNetwork, raw_sae: Any, params: dict[str, str],
                          status: int, message: str) -> None:
    a = raw_sae(kme_pair, SAE_A, KME_A)
    got_status, body, _ = await a.request("GET", "/key", params=params)
    assert (got_status, body) == (status, {"message": message})
    assert kme_pair.link_stock(KME_A, KME_B) == 1000


async def test_key_exhaustion_is_503(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    kme_pair.model.pools[(KME_A, KME_B)].drain()
    a = raw_sae(kme_pair, SAE_A, KME_A)
    status, body, _ = await a.request("GET", "/key", params={"remoteSystemID": KME_B})
    assert (status, body) == (503, {"message": "not enough key material towards this remote "
                                               "system"})


async def test_entropy(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_pair, SAE_A, KME_A)
    status, body, _ = await a.request("GET", "/entropy", params={"minentropy": "1024"})
    assert status == 200 and body["minentropy"] == 1024 and len(body["randomStr"]) == 256
    status, other, _ = await a.request("GET", "/entropy")
    assert status == 200 and len(other["randomStr"]) == 64
    status, err, _ = await a.request("GET", "/entropy", params={"minentropy": "7"})
    assert (status, err) == (400, {"message": "minentropy shall be a multiple of 8 in "
                                              "[8, 65536]"})
    assert kme_pair.link_stock(KME_A, KME_B) == 1000  # entropy is not QKD key


async def test_skip_needs_an_sae_of_this_kme(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    for sae in (SAE_STRANGER, SAE_B):
        helper = raw_sae(kme_pair, sae, KME_A)
        for path in ("/capabilities", f"/key?remoteSystemID={KME_B}", "/entropy"):
            status, body, _ = await helper.request("GET", path)
            assert (status, body) == (401, None)
    assert kme_pair.link_stock(KME_A, KME_B) == 1000
