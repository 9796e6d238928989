"""Key supply of the embedded KME network over HTTPS: exhaustion, refill, relay, outages, faults."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from gateway.kms.sim import MSG_INJECTED_503, PATH_EXTENSION, KmeNetwork
from tests.kms.conftest import KME_A, KME_B, KME_R, SAE_A, SAE_B, pair_network

pytestmark = pytest.mark.unit


# -- exhaustion and refill ----------------------------------------------------------------------
async def test_exhaustion_is_503_and_consumes_nothing(kme_pki_dir: Path, raw_sae: Any) -> None:
    async with pair_network(kme_pki_dir, max_key_count=4) as net:
        a = raw_sae(net, SAE_A, KME_A)
        status, body, _ = await a.enc_keys(SAE_B, number=5)
        assert status == 503
        assert body["message"] == ("not enough key material on the QKD path for this request; "
                                   "retry later")
        assert body["details"] == [{"link": [KME_A, KME_B], "needed_bits": 1280,
                                    "stored_bits": 1024}]
        assert net.link_stock(KME_A, KME_B) == 4
        assert (await a.enc_keys(SAE_B, number=4))[0] == 200
        assert net.link_stock(KME_A, KME_B) == 0
        status, body, _ = await a.request("GET", f"/api/v1/keys/{SAE_B}/status")
        assert body["stored_key_count"] == 0
        assert (await a.enc_keys(SAE_B))[0] == 503


async def test_refill_at_key_rate(kme_pki_dir: Path, raw_sae: Any) -> None:
    rate_keys_per_s = 40.0
    async with pair_network(kme_pki_dir, max_key_count=20,
                           key_rate=rate_keys_per_s * 256) as net:
        a = raw_sae(net, SAE_A, KME_A)
        assert (await a.enc_keys(SAE_B, number=20))[0] == 200
        start = time.monotonic()
        assert net.link_stock(KME_A, KME_B) <= 1
        await asyncio.sleep(0.25)
        stock = net.link_stock(KME_A, KME_B)
        elapsed = time.monotonic() - start
        # 40 keys/s for ~0.25 s: ~10 keys; loose bounds for a busy 2-core machine
        assert int(0.25 * rate_keys_per_s) - 1 <= stock <= int(elapsed * rate_keys_per_s) + 2
        assert (await a.enc_keys(SAE_B, number=stock))[0] == 200
        await asyncio.sleep(1.0)  # 40 keys' worth of time: capped at the pool size
        assert net.link_stock(KME_A, KME_B) == 20


# -- relay --------------------------------------------------------------------------------------
async def test_relay_across_chain_drains_both_links(kme_chain: KmeNetwork, raw_sae: Any) -> None:
    a, b = raw_sae(kme_chain, SAE_A, KME_A), raw_sae(kme_chain, SAE_B, KME_B)
    status, st, _ = await a.request("GET", f"/api/v1/keys/{SAE_B}/status")
    assert st["target_KME_ID"] == KME_B
    assert st["status_extension"] == {PATH_EXTENSION: [KME_A, KME_R, KME_B]}
    status, body, _ = await a.enc_keys(SAE_B, number=5, size=512)
    assert status == 200
    assert all(k["key_extension"] == {PATH_EXTENSION: [KME_A, KME_R, KME_B]}
               for k in body["keys"])
    assert kme_chain.link_stock(KME_A, KME_R) == 990
    assert kme_chain.link_stock(KME_R, KME_B) == 990
    assert kme_chain.model.relayed_bits == 5 * 512
    ids = [k["key_ID"] for k in body["keys"]]
    status, got, _ = await b.dec_keys(SAE_A, ids)
    assert status == 200
    assert [base64.b64decode(k["key"]) for k in got["keys"]] == [
        base64.b64decode(k["key"]) for k in body["keys"]]
    _, st, _ = await a.request("GET", f"/api/v1/keys/{SAE_B}/status")
    assert st["stored_key_count"] == 990


async def test_relay_bottleneck_is_the_emptier_link(kme_chain: KmeNetwork, raw_sae: Any) -> None:
    kme_chain.model.pools[(KME_B, KME_R)].drain()
    a = raw_sae(kme_chain, SAE_A, KME_A)
    _, st, _ = await a.request("GET", f"/api/v1/keys/{SAE_B}/status")
    assert st["stored_key_count"] == 0
    status, body, _ = await a.enc_keys(SAE_B)
    assert status == 503 and body["details"][0]["link"] == [KME_B, KME_R]
    assert kme_chain.link_stock(KME_A, KME_R) == 1000  # the first hop was not touched


async def test_stopped_relay_means_no_route_until_restarted(
        kme_chain: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_chain, SAE_A, KME_A)
    await kme_chain.stop_kme(KME_R)
    status, body, _ = await a.enc_keys(SAE_B)
    assert (status, body) == (503, {"message": "no QKD path from KME_A to KME_B through running "
                                               "KMEs", "details": [{"stopped_KMEs": [KME_R]}]})
    await kme_chain.start_kme(KME_R)
    assert (await a.enc_keys(SAE_B))[0] == 200


# -- outages ------------------------------------------------------------------------------------
async def test_stop_start_same_port_keeps_parked_keys(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_pair, SAE_A, KME_A)
    _, body, _ = await a.enc_keys(SAE_B)
    port = kme_pair.port(KME_B)
    await kme_pair.stop_kme(KME_B)
    b = raw_sae(kme_pair, SAE_B, KME_B)
    with pytest.raises(aiohttp.ClientConnectorError):
        await b.dec_keys(SAE_A, [body["keys"][0]["key_ID"]])
    assert (await a.enc_keys(SAE_B))[0] == 503  # the slave's KME cannot take its copy
    await kme_pair.start_kme(KME_B)
    assert kme_pair.port(KME_B) == port
    status, got, _ = await b.dec_keys(SAE_A, [body["keys"][0]["key_ID"]])
    assert status == 200 and got["keys"][0]["key"] == body["keys"][0]["key"]


# -- fault injection ----------------------------------------------------------------------------
async def test_latency(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_pair, SAE_A, KME_A)
    kme_pair.faults(KME_A).latency = 0.2
    start = time.monotonic()
    assert (await a.request("GET", f"/api/v1/keys/{SAE_B}/status"))[0] == 200
    assert time.monotonic() - start >= 0.2


async def test_injected_503_and_drop(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_pair, SAE_A, KME_A)
    faults = kme_pair.faults(KME_A)
    faults.error_503_rate = 1.0
    status, body, _ = await a.enc_keys(SAE_B)
    assert (status, body) == (503, {"message": MSG_INJECTED_503})
    faults.error_503_rate = 0.0
    faults.drop_rate = 1.0
    seen = faults.requests
    with pytest.raises(aiohttp.ClientError):
        await a.enc_keys(SAE_B)
    assert faults.requests > seen
    assert kme_pair.link_stock(KME_A, KME_B) == 1000  # faults strike before any key is drawn
    faults.clear()
    assert (await a.enc_keys(SAE_B))[0] == 200


async def test_pause_holds_the_answer_until_resumed(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_pair, SAE_A, KME_A)
    kme_pair.faults(KME_A).paused = True
    pending = asyncio.ensure_future(a.request("GET", f"/api/v1/keys/{SAE_B}/status"))
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done
    kme_pair.faults(KME_A).paused = False
    status, _, _ = await asyncio.wait_for(pending, timeout=5)
    assert status == 200


async def test_stop_while_paused_closes_unanswered(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_pair, SAE_A, KME_A)
    kme_pair.faults(KME_A).paused = True
    pending = asyncio.ensure_future(a.request("GET", f"/api/v1/keys/{SAE_B}/status"))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await kme_pair.stop_kme(KME_A)
    assert time.monotonic() - start < 2
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(pending, timeout=5)


# -- logs never carry key bytes -----------------------------------------------------------------
async def test_logs_name_events_and_never_carry_keys(kme_chain: KmeNetwork, raw_sae: Any) -> None:
    a, b = raw_sae(kme_chain, SAE_A, KME_A), raw_sae(kme_chain, SAE_B, KME_B)
    with structlog.testing.capture_logs() as logs:
        _, body, _ = await a.enc_keys(SAE_B, number=4)
        ids = [k["key_ID"] for k in body["keys"]]
        await b.dec_keys(SAE_A, ids)
        await b.dec_keys(SAE_A, ids)  # a rejected one too
    events = [e["event"] for e in logs]
    assert events == ["kme_keys_issued", "kme_keys_delivered", "kme_request_rejected"]
    assert logs[0]["key_ids"] == ids and logs[0]["path"] == [KME_A, KME_R, KME_B]
    text = repr(logs)
    for k in body["keys"]:
        raw = base64.b64decode(k["key"])
        for form in (raw.hex(), raw.hex().upper(), k["key"], k["key"].rstrip("=")):
            assert form not in text


async def test_answers_every_request_under_concurrent_load(
        kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a, b = raw_sae(kme_pair, SAE_A, KME_A), raw_sae(kme_pair, SAE_B, KME_B)

    async def pair() -> bool:
        _, body, _ = await a.enc_keys(SAE_B, number=2)
        _, got, _ = await b.dec_keys(SAE_A, [k["key_ID"] for k in body["keys"]])
        return bool(got["keys"] == body["keys"])

    results = await asyncio.wait_for(asyncio.gather(*(pair() for _ in range(200))), timeout=30)
    assert all(results)
    assert kme_pair.link_stock(KME_A, KME_B) == 1000 - 400


def test_fault_settings_are_validated() -> None:
    from gateway.kms.sim import Faults

    faults = Faults()
    with pytest.raises(ValueError, match=r"drop_rate must be a probability in \[0, 1\], got 2"):
        faults.drop_rate = 2
    with pytest.raises(ValueError, match="latency must be >= 0 seconds, got -1"):
        faults.latency = -1
    faults.error_503_rate = 0.5
    faults.clear()
    assert (faults.latency, faults.error_503_rate, faults.drop_rate, faults.paused) == (
        0.0, 0.0, 0.0, False)


async def test_oversized_body_is_413_json(kme_pair: KmeNetwork, raw_sae: Any) -> None:
    a = raw_sae(kme_pair, SAE_A, KME_A)
    status, body, _ = await a.request("POST", f"/api/v1/keys/{SAE_B}/enc_keys",
                                      data=b" " * (2 * 1024 * 1024))
    assert status == 413 and body == {"message": "Request Entity Too Large"}
