"""Measure data plane call latency against a real wireguard-go in a throw-away namespace.

    sudo .venv/bin/python -m tests.dataplane.measure_latency [--calls 300]

Not a test (no assertions on timing: this shared 2-core machine is noisy); the figures in
docs/dataplane.md come from it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from gateway.dataplane import UserspaceBackend, WgInterfaceSpec, WgPeerSpec
from gateway.keymaterial import Secret
from tests.netns_harness import NetnsLab, wg_keypair


async def timed(calls: int, fn: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(len(samples) * 0.99) - 1] * 1e3


async def main(calls: int) -> None:
    with NetnsLab(prefix="bench") as lab:
        ns = lab.namespace("m")
        name = lab.ifname("wgm")
        backend = UserspaceBackend(ns.name)
        key, _ = wg_keypair()
        _, peer = wg_keypair()
        spec = WgInterfaceSpec(name, Secret(key), 51820, ("10.0.0.1/24",),
                               (WgPeerSpec(peer, "192.0.2.1:51820", ("10.0.0.2/32",)),))
        start = time.perf_counter()
        await backend.apply(spec)
        print(f"apply (create)           {1e3 * (time.perf_counter() - start):7.2f} ms")
        for label, fn in (
            ("set_psk + read-back", lambda: backend.set_psk(name, peer, Secret.random(32))),
            ("force_handshake", lambda: backend.force_handshake(name, peer)),
            ("peer_status", lambda: backend.peer_status(name)),
            ("apply (no drift)", lambda: backend.apply(spec)),
        ):
            n = calls if "apply" not in label else max(10, calls // 3)
            median, p99 = await timed(n, fn)
            print(f"{label:24} median {median:6.2f} ms  p99 {p99:6.2f} ms  ({n} calls)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    asyncio.run(main(parser.parse_args().calls))
