"""KMS client throughput and latency against the embedded KME network, with a baseline.

Everything runs in this one process and event loop on loopback: two simulated KMEs (KME_A,
KME_B) with mutual TLS, the gateway's Etsi014Client as SAE_A (enc_keys at KME_A) and SAE_B
(dec_keys at KME_B), one request in flight at a time over one kept-alive connection.

Baseline, same run, same TLS server and connection style: a bare aiohttp GET of the KME's small
static JSON answer (/capabilities) without the client's parsing and checks, so the figures read
as ratios (client request time / bare request time) and survive a change of machine.

    .venv/bin/python bench/bench_kms.py                 # ~10 s
    .venv/bin/python bench/bench_kms.py --duration 5    # steadier figures
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.kms import Etsi014Client, KeyPool
from gateway.kms.sim import KmeNetwork
from gateway.kms.tls import client_ssl_context

KME_A, KME_B, SAE_A, SAE_B = "KME_A", "KME_B", "SAE_A", "SAE_B"


WARMUP = 20


async def measure(
    op: Callable[[], Awaitable[int]], duration: float, limit: int | None = None
) -> tuple[int, int, list[float]]:
    """Run ``op`` back to back for ``duration`` s (or ``limit`` calls): requests, items, times."""
    for _ in range(WARMUP):  # warm-up: connection set up, caches filled
        await op()
    requests = items = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline and (limit is None or requests < limit):
        started = time.perf_counter()
        items += await op()
        latencies.append(time.perf_counter() - started)
        requests += 1
    return requests, items, latencies


def row(name: str, requests: int, items: int, lat: list[float], base_ms: float | None) -> str:
    total = sum(lat)
    p50 = statistics.median(lat) * 1000
    p99 = sorted(lat)[int(len(lat) * 0.99) - 1] * 1000
    ratio = f"{p50 / base_ms:5.2f}x" if base_ms else "  1.00x"
    return (f"{name:<26} {requests / total:9.0f} req/s {items / total:10.0f} keys/s "
            f"p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  {ratio}")


async def run(duration: float) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        async with KmeNetwork(Path(tmp), kmes={KME_A: ("127.0.0.1", 0), KME_B: ("127.0.0.1", 0)},
                              links=[(KME_A, KME_B)], saes={SAE_A: KME_A, SAE_B: KME_B},
                              max_key_count=50_000_000) as net:
            pki = net.pki

            def client(sae: str, kme: str) -> Etsi014Client:
                return Etsi014Client(name=kme, url=net.url(kme), kme_id=kme,
                                     ca_file=pki.ca_cert, cert_file=pki.sae_cert(sae),
                                     key_file=pki.sae_key(sae))

            ctx = client_ssl_context(pki.ca_cert, pki.sae_cert(SAE_A), pki.sae_key(SAE_A))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as bare:
                url = net.url(KME_A) + "/capabilities"

                async def baseline() -> int:
                    async with bare.get(url) as resp:
                        await resp.read()
                        assert resp.status == 200
                    return 0

                n, _, lat = await measure(baseline, duration)
                base_ms = statistics.median(lat) * 1000
                print(f"# {duration} s per row, one request in flight, loopback, mutual TLS")
                print(row("baseline bare GET", n, n, lat, None).replace(
                    f"{n / sum(lat):10.0f} keys/s", "         - keys/s"))

            async with client(SAE_A, KME_A) as master, client(SAE_B, KME_B) as slave:
                for batch in (1, 64):
                    fetched: list[str] = []

                    async def enc(batch: int = batch, fetched: list[str] = fetched) -> int:
                        keys = await master.get_keys(SAE_B, batch, 256)
                        fetched.extend(k.key_id for k in keys)
                        return len(keys)

                    n, items, lat = await measure(enc, duration)
                    print(row(f"enc_keys batch {batch}", n, items, lat, base_ms))
                    chunks = [fetched[i:i + batch] for i in range(0, len(fetched), batch)]

                    async def dec(chunks: list[list[str]] = chunks) -> int:
                        return len(await slave.get_keys_by_id(SAE_A, chunks.pop()))

                    # dec_keys can fetch only the keys enc_keys made: stop when they run out.
                    n, items, lat = await measure(dec, duration, len(chunks) - WARMUP)
                    print(row(f"dec_keys batch {batch}", n, items, lat, base_ms))

                # The pool: take(1) drains memory while the refill task fetches batches of 64.
                async with KeyPool(master, SAE_B, 256, low_water=256, high_water=1024,
                                   batch=64, status_interval=None) as pool:
                    for _ in range(500):  # let the first refills fill it (<= 5 s)
                        if pool.size >= 1024:
                            break
                        await asyncio.sleep(0.01)

                    async def take() -> int:
                        return len(await pool.take(1, timeout=5.0))

                    n, items, lat = await measure(take, duration)
                    print(row("pool take(1), refilling", n, items, lat, base_ms))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per row (2)")
    args = parser.parse_args()
    asyncio.run(run(args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
