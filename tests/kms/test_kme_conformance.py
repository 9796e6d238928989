"""ETSI GS QKD 014 conformance of the embedded KME, over real mutual-TLS HTTPS on loopback."""

from __future__ import annotations

import base64

import pytest

from gateway.kms.sim import KmeNetwork
from tests.kms.conftest import KME_A, KME_B, SAE_A, SAE_B

pytestmark = pytest.mark.unit


async def test_keys_equal_at_both_ends(kme_pair: KmeNetwork, raw_sae) -> None:
    a, b = raw_sae(kme_pair, SAE_A, KME_A), raw_sae(kme_pair, SAE_B, KME_B)
    status, body, headers = await a.enc_keys(SAE_B, number=2)
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    ids = [k["key_ID"] for k in body["keys"]]
    status, body2, _ = await b.dec_keys(SAE_A, ids)
    assert status == 200, body2
    assert [base64.b64decode(k["key"]) for k in body["keys"]] == [
        base64.b64decode(k["key"]) for k in body2["keys"]]
