"""The key pool against the mini KME over real mutual TLS: refill, exactly-once, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from aiohttp import web

from gateway.kms import Etsi014Client, KeyPoolClosed, KeyPoolTimeout, RetryPolicy
from gateway.kms.pool import KeyPool
from tests.kms.test_client_support import SAE_B, MiniKme, client_for, leak_forms, make_pki

pytestmark = pytest.mark.unit
NO_RETRY = RetryPolicy(attempts=1)
QUICK_BACKOFF = RetryPolicy(attempts=1, base_delay=0.02, max_delay=0.1)


@pytest.fixture
async def kme(tmp_path: Path) -> AsyncIterator[MiniKme]:
    server = MiniKme(make_pki(tmp_path / "pki"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(kme: MiniKme) -> AsyncIterator[Etsi014Client]:
    async with client_for(kme.pki, kme.url, retry=NO_RETRY) as c:
        yield c


async def wait_for(predicate: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def enc_requests(kme: MiniKme) -> int:
    return sum(1 for _, path in kme.requests if path.endswith("/enc_keys"))


async def test_fills_ahead_and_take_does_not_wait_on_http(kme: MiniKme, client: Etsi014Client) -> None:
    async with KeyPool(client, SAE_B, 256, low_water=8, high_water=32,
                       batch=16, status_interval=None) as pool:
        await wait_for(lambda: pool.size == 32)
        assert enc_requests(kme) == 2  # two batches of 16
        before = len(kme.requests)
        started = time.perf_counter()
        keys = await pool.take(20, timeout=1.0)
        elapsed = time.perf_counter() - started
        assert len(keys) == 20 and all(k.size_bits == 256 for k in keys)
        assert elapsed < 0.05 and len(kme.requests) == before
        await asyncio.sleep(0.05)
        assert pool.size == 12 and enc_requests(kme) == 2  # 12 >= low water: no refill yet
    assert pool.stats().handed_out == 20


async def test_refill_starts_below_low_water(kme: MiniKme, client: Etsi014Client) -> None:
    async with KeyPool(client, SAE_B, 256, low_water=8, high_water=16,
                       batch=16, status_interval=None) as pool:
        await wait_for(lambda: pool.size == 16)
        await pool.take(8)  # 8 left: not below low water, no refill
        await asyncio.sleep(0.1)
        assert enc_requests(kme) == 1 and pool.size == 8
        await pool.take(1)  # 7 < 8: refill to 16
        await wait_for(lambda: pool.size == 16)
        assert enc_requests(kme) == 2 and kme.bodies[-1] == {"number": 9, "size": 256}


async def test_each_key_handed_out_exactly_once(kme: MiniKme, client: Etsi014Client) -> None:
    async with KeyPool(client, SAE_B, 128, low_water=4, high_water=12,
                       batch=5, status_interval=None) as pool:
        results = await asyncio.gather(*(pool.take(3, timeout=5.0) for _ in range(40)))
        stats = pool.stats()
    ids = [k.key_id for batch in results for k in batch]
    assert len(ids) == 120 and len(set(ids)) == 120
    assert stats.handed_out == 120
    assert stats.fetched == stats.handed_out + stats.wasted
    assert max(b["number"] for b in kme.bodies if b) <= 5  # batches never exceed `batch`


async def test_timeout_names_the_kms_error_and_backs_off(kme: MiniKme, client: Etsi014Client) -> None:
    async def out_of_keys(request: web.Request) -> web.StreamResponse:
        return web.json_response({"message": "Error on server side"}, status=503)
    kme.override = out_of_keys
    with structlog.testing.capture_logs() as logs:
        async with KeyPool(client, SAE_B, 256, low_water=2, high_water=8,
                           status_interval=None, backoff=QUICK_BACKOFF) as pool:
            with pytest.raises(KeyPoolTimeout, match="KmsUnavailable") as info:
                await pool.take(1, timeout=0.6)
            stats = pool.stats()
    assert "within 0.6 s" in str(info.value)
    # capped, jittered backoff: at most one try per ~base delay, not a busy loop
    assert 2 <= stats.failures <= 0.6 / 0.01
    assert stats.refills == 0 and stats.handed_out == 0
    assert any(e["event"] == "kms_pool_refill_failed" for e in logs)


async def test_recovers_when_kms_comes_back(kme: MiniKme, client: Etsi014Client) -> None:
    kme.override = lambda request: _503()
    async with KeyPool(client, SAE_B, 256, low_water=2, high_water=8,
                       status_interval=None, backoff=QUICK_BACKOFF) as pool:
        await wait_for(lambda: pool.stats().failures >= 2)
        kme.override = None
        keys = await pool.take(4, timeout=2.0)
        assert len(keys) == 4 and pool.stats().last_error is not None


async def _503() -> web.StreamResponse:
    return web.json_response({"message": "busy"}, status=503)


async def test_close_counts_wasted_and_wakes_waiters(kme: MiniKme, client: Etsi014Client) -> None:
    pool = KeyPool(client, SAE_B, 256, low_water=5, high_water=6,
                   status_interval=None)
    await pool.start()
    await wait_for(lambda: pool.size == 6)
    await pool.take(2)
    await wait_for(lambda: pool.size == 6)
    waiter = asyncio.create_task(pool.take(6, timeout=5.0))
    await asyncio.sleep(0)  # the waiter takes all six
    kme.override = lambda request: _503()
    assert len(await waiter) == 6
    late = asyncio.create_task(pool.take(6, timeout=5.0))
    await asyncio.sleep(0.05)
    await pool.aclose()
    with pytest.raises(KeyPoolClosed):
        await late
    stats = pool.stats()
    assert stats.wasted == stats.fetched - stats.handed_out and stats.size == 0
    with pytest.raises(KeyPoolClosed):
        await pool.take(1)


async def test_status_poll_exposes_stock_and_caps_batches(kme: MiniKme) -> None:
    async def small_kme(request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith("/status"):
            return web.json_response({
                "source_KME_ID": "KME_A", "target_KME_ID": "KME_B", "master_SAE_ID": "SAE_A",
                "slave_SAE_ID": "SAE_B", "key_size": 256, "stored_key_count": 77,
                "max_key_count": 100, "max_key_per_request": 4, "max_key_size": 256,
                "min_key_size": 256, "max_SAE_ID_count": 0})
        return None
    kme.override = small_kme
    async with client_for(kme.pki, kme.url) as client:
        pool = KeyPool(client, SAE_B, 256, low_water=2, high_water=10, batch=10,
                       status_interval=60.0)
        assert pool.stored_key_count is None
        await pool.poll_status()  # before start, so the cap applies from the first batch
        async with pool:
            await wait_for(lambda: pool.size == 10)
        assert pool.stored_key_count == 77 and pool.stats().stored_key_count == 77
    assert [b["number"] for b in kme.bodies if b] == [4, 4, 2]


async def test_no_key_bytes_in_pool_logs(kme: MiniKme, client: Etsi014Client,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with structlog.testing.capture_logs() as logs:
        async with KeyPool(client, SAE_B, 256, low_water=2, high_water=8,
                           status_interval=None) as pool:
            keys = await pool.take(8, timeout=2.0)
            text = repr(keys) + repr(pool.stats())
    blob = text + repr(logs) + capsys.readouterr().out
    for raw in kme.served:
        for form in leak_forms(raw):
            assert form not in blob


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="low_water"):
        KeyPool(object(), SAE_B, 256, low_water=8, high_water=8)  # type: ignore[arg-type]


async def test_take_without_start_fills_the_pool(kme: MiniKme, client: Etsi014Client) -> None:
    pool = KeyPool(client, SAE_B, 256, low_water=1, high_water=4,
                   status_interval=None)
    try:
        assert len(await pool.take(2, timeout=2.0)) == 2
    finally:
        await pool.aclose()
    with pytest.raises(ValueError, match="multiple of 8"):
        KeyPool(client, SAE_B, 100)
