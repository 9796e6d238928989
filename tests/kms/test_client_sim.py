"""The ETSI 014 client against the embedded KME network (gateway.kms.sim): every method and
form, batching, exhaustion and recovery, relay, mTLS negatives, pauses and drops, no leaks."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.kms import (
    Etsi014Client,
    KeyPool,
    KmeIdentityMismatch,
    KmsBadRequest,
    KmsConnectionError,
    KmsIndeterminate,
    KmsTimeout,
    KmsTlsError,
    KmsUnauthorized,
    KmsUnavailable,
    RetryPolicy,
)
from gateway.kms.sim import MSG_EXT_MANDATORY, PATH_EXTENSION, KmeNetwork
from gateway.kms.sim.pki import Pki, ensure_pki
from tests.kms.conftest import KME_A, KME_B, KME_R, LOOPBACK, SAE_A, SAE_B
from tests.kms.test_client_support import leak_forms

pytestmark = pytest.mark.unit
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)
NO_RETRY = RetryPolicy(attempts=1)


def sae_client(net: KmeNetwork, sae: str, kme: str, pki: Pki | None = None,
               **kwargs: Any) -> Etsi014Client:
    pki = pki or net.pki
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("timeout", 2.0)
    return Etsi014Client(name=f"kms-{kme}", url=net.url(kme), kme_id=kwargs.pop("kme_id", kme),
                         ca_file=kwargs.pop("ca_file", pki.ca_cert), cert_file=pki.sae_cert(sae),
                         key_file=pki.sae_key(sae), **kwargs)


async def test_every_method_and_form(kme_pair: KmeNetwork) -> None:
    for use_get in (False, True):
        async with sae_client(kme_pair, SAE_A, KME_A, use_get=use_get) as a, \
                sae_client(kme_pair, SAE_B, KME_B, use_get=use_get) as b:
            status = await a.status(SAE_B)
            assert (status.source_kme_id, status.target_kme_id) == (KME_A, KME_B)
            assert status.max_key_per_request == 128
            batch = await a.get_keys(SAE_B, 64, 256)
            single = await a.get_keys(SAE_B)
            assert len(batch) == 64 and single[0].size_bits == status.key_size
            got = await b.get_keys_by_id(SAE_A, [k.key_id for k in batch])
            assert [k.key for k in got] == [k.key for k in batch]
            one = await b.get_keys_by_id(SAE_A, [single[0].key_id])
            assert one[0].key == single[0].key
            # fetched once on each side: the KME erased them
            with pytest.raises(KmsBadRequest) as info:
                await b.get_keys_by_id(SAE_A, [single[0].key_id])
            assert info.value.not_found


async def test_extensions_and_limits(kme_pair: KmeNetwork) -> None:
    async with sae_client(kme_pair, SAE_A, KME_A) as a:
        keys = await a.get_keys(SAE_B, 2, 512, extension_optional=[{"abc_x": 1}])
        assert len(keys) == 2
        with pytest.raises(KmsBadRequest) as info:
            await a.get_keys(SAE_B, 1, 256, extension_mandatory=[{"abc_route": "x"}])
        assert info.value.server_message == MSG_EXT_MANDATORY
        with pytest.raises(KmsBadRequest, match="400"):
            await a.get_keys(SAE_B, 129, 256)  # more than max_key_per_request
    async with sae_client(kme_pair, SAE_A, KME_B) as wrong_kme:  # SAE_A is not KME_B's
        with pytest.raises(KmsUnauthorized, match="401"):
            await wrong_kme.get_keys_by_id(SAE_A, [keys[0].key_id])


async def test_relayed_keys_across_the_chain(kme_chain: KmeNetwork) -> None:
    async with sae_client(kme_chain, SAE_A, KME_A) as a, \
            sae_client(kme_chain, SAE_B, KME_B) as b:
        status = await a.status(SAE_B)
        assert status.status_extension == {PATH_EXTENSION: [KME_A, KME_R, KME_B]}
        keys = await a.get_keys(SAE_B, 8, 256)
        got = await b.get_keys_by_id(SAE_A, [k.key_id for k in keys])
    assert [k.key for k in got] == [k.key for k in keys]
    assert got[0].key_extension == {PATH_EXTENSION: [KME_A, KME_R, KME_B]}


def rate_net(directory: Path, keys_per_s: float, capacity: int) -> KmeNetwork:
    return KmeNetwork(directory, kmes={KME_A: (LOOPBACK, 0), KME_B: (LOOPBACK, 0)},
                      links=[(KME_A, KME_B)], saes={SAE_A: KME_A, SAE_B: KME_B},
                      key_rate=keys_per_s * 256, max_key_count=capacity)


async def test_exhaustion_and_recovery_at_the_key_rate(tmp_path: Path) -> None:
    rate_keys = 40.0  # keys of 256 bits per second
    async with rate_net(tmp_path, rate_keys, 10) as net, \
            sae_client(net, SAE_A, KME_A, retry=NO_RETRY) as a:
        await a.get_keys(SAE_B, 10, 256)
        with pytest.raises(KmsUnavailable, match="503"):
            await a.get_keys(SAE_B, 10, 256)
        started = time.monotonic()
        while True:  # 4 keys come back after ~0.1 s at 40 keys/s
            try:
                await a.get_keys(SAE_B, 4, 256)
                break
            except KmsUnavailable:
                await asyncio.sleep(0.02)
        waited = time.monotonic() - started
    assert 4 / rate_keys * 0.5 <= waited <= 4 / rate_keys * 5


async def test_pool_refills_from_the_sim(tmp_path: Path) -> None:
    async with rate_net(tmp_path, 200, 40) as net, sae_client(net, SAE_A, KME_A) as a, \
            sae_client(net, SAE_B, KME_B) as b:
        pool = KeyPool(a, SAE_B, 256, low_water=8, high_water=32, batch=16,
                       status_interval=0.05, backoff=RetryPolicy(1, 0.01, 0.05))
        async with pool:
            taken = [k for _ in range(6) for k in await pool.take(16, timeout=3.0)]
            await asyncio.sleep(0.1)
            assert pool.stored_key_count is not None and pool.stored_key_count <= 40
        stats = pool.stats()
        assert len({k.key_id for k in taken}) == 96  # more than the link ever held at once
        assert stats.refills >= 6 and stats.fetched == stats.handed_out + stats.wasted
        got = await b.get_keys_by_id(SAE_A, [k.key_id for k in taken[:5]])
        assert [k.key for k in got] == [k.key for k in taken[:5]]


async def test_kme_id_mismatch_sends_no_request(kme_pair: KmeNetwork) -> None:
    async with sae_client(kme_pair, SAE_A, KME_A, kme_id=KME_B) as a:
        with pytest.raises(KmeIdentityMismatch):
            await a.get_keys(SAE_B)
        with pytest.raises(KmeIdentityMismatch):
            await a.status(SAE_B)
    assert kme_pair.faults(KME_A).requests == 0


async def test_wrong_ca_or_foreign_client_cert_sends_no_request(
        kme_pair: KmeNetwork, tmp_path: Path) -> None:
    other = ensure_pki(tmp_path / "other", kmes={KME_A: []}, saes=[SAE_A])
    async with sae_client(kme_pair, SAE_A, KME_A, ca_file=other.ca_cert) as a:
        with pytest.raises(KmsTlsError):
            await a.get_keys(SAE_B)
    async with sae_client(kme_pair, SAE_A, KME_A, pki=other,
                          ca_file=kme_pair.pki.ca_cert) as a:
        with pytest.raises((KmsTlsError, KmsConnectionError)):
            await a.get_keys(SAE_B)
    assert kme_pair.faults(KME_A).requests == 0


async def test_paused_kme_times_out(kme_pair: KmeNetwork) -> None:
    faults = kme_pair.faults(KME_A)
    async with sae_client(kme_pair, SAE_A, KME_A, timeout=0.3) as a:
        keys = await a.get_keys(SAE_B, 1)
        faults.paused = True
        with pytest.raises(KmsTimeout):
            await a.status(SAE_B)
        assert faults.requests == 3  # the first call, then status tried twice
    kme_pair.faults(KME_B).paused = True
    async with sae_client(kme_pair, SAE_B, KME_B, timeout=0.3) as b:
        with pytest.raises(KmsIndeterminate):
            await b.get_keys_by_id(SAE_A, [keys[0].key_id])
    assert kme_pair.faults(KME_B).requests == 1
    faults.paused = kme_pair.faults(KME_B).paused = False


async def test_dropped_dec_keys_is_indeterminate_not_repeated(kme_pair: KmeNetwork) -> None:
    async with sae_client(kme_pair, SAE_A, KME_A) as a, \
            sae_client(kme_pair, SAE_B, KME_B) as b:
        keys = await a.get_keys(SAE_B, 2)
        kme_pair.faults(KME_B).drop_rate = 1.0
        with pytest.raises(KmsIndeterminate, match="start with new keys"):
            await b.get_keys_by_id(SAE_A, [k.key_id for k in keys])
        assert kme_pair.faults(KME_B).requests == 1
        kme_pair.faults(KME_A).drop_rate = 1.0  # enc_keys: a retry only wastes keys
        with pytest.raises(KmsConnectionError):
            await a.get_keys(SAE_B)
        assert kme_pair.faults(KME_A).requests == 1 + FAST.attempts


async def test_dropped_dec_keys_get_is_not_resent_by_aiohttp(kme_pair: KmeNetwork) -> None:
    # aiohttp re-sends an idempotent request once when a reused connection dies; for a
    # dec_keys GET that would be a blind repeat. The client switches that off.
    async with sae_client(kme_pair, SAE_A, KME_A) as a, \
            sae_client(kme_pair, SAE_B, KME_B, use_get=True) as b:
        keys = await a.get_keys(SAE_B, 2)
        await b.get_keys_by_id(SAE_A, [keys[0].key_id])  # the connection is now kept alive
        kme_pair.faults(KME_B).drop_rate = 1.0
        with pytest.raises(KmsIndeterminate):
            await b.get_keys_by_id(SAE_A, [keys[1].key_id])
        assert kme_pair.faults(KME_B).requests == 2


async def test_stopped_kme_then_back(kme_pair: KmeNetwork) -> None:
    async with sae_client(kme_pair, SAE_A, KME_A) as a:
        await kme_pair.stop_kme(KME_A)
        with pytest.raises(KmsConnectionError, match="cannot connect"):
            await a.get_keys(SAE_B)
        await kme_pair.start_kme(KME_A)
        assert len(await a.get_keys(SAE_B, 3)) == 3


async def test_no_key_bytes_anywhere(kme_chain: KmeNetwork, caplog: pytest.LogCaptureFixture,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with sae_client(kme_chain, SAE_A, KME_A) as a, \
                sae_client(kme_chain, SAE_B, KME_B) as b:
            keys = await a.get_keys(SAE_B, 16, 256)
            got = await b.get_keys_by_id(SAE_A, [k.key_id for k in keys])
            kme_chain.faults(KME_B).drop_rate = 1.0
            more = await a.get_keys(SAE_B, 2, 256)
            for call in (b.get_keys_by_id(SAE_A, [k.key_id for k in more]),
                         b.get_keys_by_id(SAE_A, [keys[0].key_id])):
                with pytest.raises(KmsIndeterminate) as info:
                    await call
                texts += [str(info.value), repr(info.value)]
            texts += [repr(keys), repr(got), str(more)]
    out = capsys.readouterr()
    blob = "\n".join([*texts, repr(logs), caplog.text, out.out, out.err])
    assert keys[0].key_id in blob
    for k in [*keys, *more]:
        for form in leak_forms(k.key.reveal()):
            assert form not in blob
