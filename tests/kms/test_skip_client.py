"""The SKIP client against the embedded KME network's SKIP endpoints, over mutual TLS."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.kms import (
    KeyPool,
    KeySource,
    KmeIdentityMismatch,
    KmsBadRequest,
    KmsIndeterminate,
    RetryPolicy,
    SkipClient,
)
from gateway.kms.sim import KmeNetwork
from tests.kms.conftest import KME_A, KME_B, SAE_A, SAE_B
from tests.kms.test_client_support import leak_forms

pytestmark = pytest.mark.unit
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


def skip_client(net: KmeNetwork, sae: str, kme: str, remotes: dict[str, str],
                **kwargs: Any) -> SkipClient:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("timeout", 1.0)
    return SkipClient(name=f"skip-{kme}", url=net.url(kme),
                      local_system_id=kwargs.pop("local_system_id", kme),
                      remote_system_ids=remotes, ca_file=net.pki.ca_cert,
                      cert_file=net.pki.sae_cert(sae), key_file=net.pki.sae_key(sae), **kwargs)


async def test_skip_roundtrip_over_a_relay(kme_chain: KmeNetwork) -> None:
    async with skip_client(kme_chain, SAE_A, KME_A, {SAE_B: KME_B}) as a, \
            skip_client(kme_chain, SAE_B, KME_B, {SAE_A: KME_A}) as b:
        assert isinstance(a, KeySource)
        status = await a.status(SAE_B)
        assert (status.source_kme_id, status.target_kme_id) == (KME_A, KME_B)
        assert status.status_extension is not None
        assert status.status_extension["skip"]["localSystemID"] == KME_A
        keys = await a.get_keys(SAE_B, 3, 256)
        assert len(keys) == 3 and all(k.size_bits == 256 for k in keys)
        got = await b.get_keys_by_id(SAE_A, [k.key_id.upper() for k in keys])
        assert [k.key for k in got] == [k.key for k in keys]
        with pytest.raises(KmsBadRequest) as info:  # erased after the first fetch: 404
            await b.get_keys_by_id(SAE_A, [keys[0].key_id])
        assert info.value.not_found


async def test_unknown_sae_and_unreachable_remote(kme_pair: KmeNetwork) -> None:
    async with skip_client(kme_pair, SAE_A, KME_A, {SAE_B: "NOWHERE"}) as a:
        with pytest.raises(KmsBadRequest, match="remote_system_ids"):
            await a.get_keys("SAE_C")
        with pytest.raises(KmsBadRequest, match="NOWHERE"):
            await a.status(SAE_B)
        with pytest.raises(KmsBadRequest, match="400"):
            await a.get_keys(SAE_B)


async def test_identity_checked_against_local_system_id(kme_pair: KmeNetwork) -> None:
    async with skip_client(kme_pair, SAE_A, KME_A, {SAE_B: KME_B},
                           local_system_id=KME_B) as a:
        with pytest.raises(KmeIdentityMismatch):
            await a.get_keys(SAE_B)
    assert kme_pair.faults(KME_A).requests == 0


async def test_lost_key_by_id_answer_is_indeterminate(kme_pair: KmeNetwork) -> None:
    async with skip_client(kme_pair, SAE_A, KME_A, {SAE_B: KME_B}) as a, \
            skip_client(kme_pair, SAE_B, KME_B, {SAE_A: KME_A}) as b:
        keys = await a.get_keys(SAE_B, 1)
        kme_pair.faults(KME_B).drop_rate = 1.0
        with pytest.raises(KmsIndeterminate):
            await b.get_keys_by_id(SAE_A, [keys[0].key_id])
        assert kme_pair.faults(KME_B).requests == 1


async def test_pool_over_skip_reports_unknown_stock(kme_pair: KmeNetwork,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    async with skip_client(kme_pair, SAE_A, KME_A, {SAE_B: KME_B}) as a:
        pool = KeyPool(a, SAE_B, 256, low_water=2, high_water=4, status_interval=None)
        await pool.poll_status()
        async with pool:
            keys = await pool.take(4, timeout=2.0)
        assert pool.stored_key_count is None and len(keys) == 4
    out = capsys.readouterr().out
    for k in keys:
        for form in leak_forms(k.key.reveal()):
            assert form not in out
