"""Slave-side dec_keys coalescing against the real embedded KME network (mutual TLS)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.daemon.fetcher import FetchBatcher
from gateway.kms import KmsBadRequest
from gateway.kms.sim import KmeNetwork
from tests.kms.conftest import KME_A, KME_B, SAE_A, SAE_B
from tests.kms.test_client_sim import sae_client

pytestmark = pytest.mark.unit


async def test_concurrent_fetches_share_requests_and_get_their_own_keys(
        kme_pair: KmeNetwork) -> None:
    master, slave = sae_client(kme_pair, SAE_A, KME_A), sae_client(kme_pair, SAE_B, KME_B)
    try:
        taken = await master.get_keys(SAE_B, 20, 256)
        batcher = FetchBatcher(slave)
        got = await asyncio.gather(*(batcher.fetch(SAE_A, [k.key_id]) for k in taken))
        for k, (g,) in zip(taken, got, strict=True):
            assert g.key_id == k.key_id and g.key == k.key
        # All 20 were asked for before the first request left: one request carries them.
        assert batcher.requests == 1
        # A lone fetch is never held back for company.
        more = await master.get_keys(SAE_B, 1, 256)
        (one,) = await batcher.fetch(SAE_A, [more[0].key_id])
        assert one.key == more[0].key and batcher.requests == 2
    finally:
        await master.aclose()
        await slave.aclose()


async def test_an_unknown_key_id_spoils_only_its_own_fetch(kme_pair: KmeNetwork) -> None:
    master, slave = sae_client(kme_pair, SAE_A, KME_A), sae_client(kme_pair, SAE_B, KME_B)
    try:
        taken = await master.get_keys(SAE_B, 4, 256)
        batcher = FetchBatcher(slave)
        bogus = "00000000-0000-4000-8000-000000000000"
        ids = [taken[0].key_id, *[k.key_id for k in taken[1:2]], bogus,
               *[k.key_id for k in taken[2:]]]
        results = await asyncio.gather(*(batcher.fetch(SAE_A, [i]) for i in ids),
                                       return_exceptions=True)
        bad = results[2]
        assert isinstance(bad, KmsBadRequest) and bad.not_found
        good = [r for i, r in enumerate(results) if i != 2]
        assert all(isinstance(r, list) and r[0].key == k.key
                   for r, k in zip(good, taken, strict=True))
    finally:
        await master.aclose()
        await slave.aclose()
