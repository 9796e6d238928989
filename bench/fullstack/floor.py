"""The cost floor of one rekey, timed in the same run as the full stack: the protocol's crypto
primitives for one rekey (both sides; ``crypto_floor_once`` of bench/bench_protocol.py: ML-KEM-768
keygen + encaps + decaps, 2 X25519, the transcript hashes, HKDF, HMACs, the AES-GCM records) plus
one bare mutual-TLS GET per KMS request, against the same kind of KME the daemons use (the
embedded KME network in its own process, a kept-alive connection, the small ``status`` answer).
A GET's cost is the client's CPU (this thread) plus the KME process's on-CPU time."""

from __future__ import annotations

import http.client
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from bench.bench_protocol import crypto_floor_once
from bench.fullstack.gateways import GatewayPair
from bench.fullstack.procstat import cpu_ns

__all__ = ["crypto_ms", "mtls_get_ms"]


def crypto_ms(n: int = 300) -> float:
    """CPU ms of the crypto of one rekey, both sides (median of 5 batches)."""
    crypto_floor_once()
    runs = []
    for _ in range(5):
        t0 = time.thread_time()
        for _ in range(n // 5):
            crypto_floor_once()
        runs.append((time.thread_time() - t0) * 1000 / (n // 5))
    return sorted(runs)[len(runs) // 2]


def mtls_get_ms(n: int = 400) -> dict[str, Any]:
    """CPU ms of one bare mutual-TLS GET (client + KME), kept-alive connection."""
    pair = GatewayPair(1, 120, 180)
    try:
        pair.start_kms_only()
        site, other = pair.sites
        url = urlsplit(pair.kme_urls[site.kme_id])
        ctx = ssl.create_default_context(cafile=str(pair.pki / "ca.crt"))
        ctx.load_cert_chain(pair.pki / f"{site.sae_id}.crt", pair.pki / f"{site.sae_id}.key")
        conn = http.client.HTTPSConnection(url.hostname or "127.0.0.1", url.port, context=ctx,
                                           timeout=10)
        path = f"/api/v1/keys/{other.sae_id}/status"

        def get() -> None:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"KME status answered {resp.status}")

        for _ in range(20):
            get()
        assert pair.kms is not None
        server0, client0 = cpu_ns(pair.kms.pid), time.thread_time()
        for _ in range(n):
            get()
        client = (time.thread_time() - client0) * 1000 / n
        server = (cpu_ns(pair.kms.pid) - server0) / 1e6 / n
        conn.close()
        return {"ms": client + server, "client_ms": client, "kme_ms": server}
    finally:
        pair.__exit__()
