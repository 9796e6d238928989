"""What one PSK write costs on kernel WireGuard: KernelBackend.set_psk (the write and its
read-back) and get_psk against one interface with N peers, in a network namespace of its own.

Runs where kernel WireGuard exists (the kernel lab), as root:

    scripts/kernel_lab.sh --exec '.venv/bin/python -m bench.fullstack.kernel_psk --peers 10,100'
    ... --source /work/old    # the backend of another checkout (a `git worktree` the guest
                              # sees: not under /tmp), for a before/after in one boot

Prints one JSON object: per peer count, the client's CPU (``time.process_time``) and wall time
per call, and how many generic netlink sockets the backend opened. Kernel WireGuard's own work
is kernel time spent in this process's system calls, so it is in the CPU figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

ROOT = Path(__file__).resolve().parents[2]


def _keypair() -> tuple[bytes, str]:
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw, base64.b64encode(pub).decode()


async def measure(ns: str, peers: int, calls: int) -> dict[str, Any]:
    from gateway.dataplane import KernelBackend, WgInterfaceSpec, WgPeerSpec
    from gateway.keymaterial import Secret

    backend = KernelBackend(ns)
    try:
        private, _ = _keypair()
        pubs = [_keypair()[1] for _ in range(peers)]
        spec = WgInterfaceSpec(
            name="wgbench", private_key=Secret(private), listen_port=51820,
            addresses=("10.77.0.1/16",),
            peers=tuple(WgPeerSpec(p, None, (f"10.77.{i // 250}.{i % 250 + 2}/32",), None)
                        for i, p in enumerate(pubs)))
        await backend.apply(spec)
        await backend.set_psk("wgbench", pubs[0], Secret.random(32))  # warm-up
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(calls):
            await backend.set_psk("wgbench", pubs[i % peers], Secret.random(32))
        cpu1, wall1 = time.process_time(), time.perf_counter()
        for i in range(calls):
            await backend.get_psk("wgbench", pubs[i % peers])
        cpu2, wall2 = time.process_time(), time.perf_counter()
        return {
            "peers": peers, "calls": calls,
            "set_psk_cpu_ms": round((cpu1 - cpu0) * 1000 / calls, 3),
            "set_psk_wall_ms": round((wall1 - wall0) * 1000 / calls, 3),
            "get_psk_cpu_ms": round((cpu2 - cpu1) * 1000 / calls, 3),
            "get_psk_wall_ms": round((wall2 - wall1) * 1000 / calls, 3),
            "sockets_opened": getattr(backend, "sockets_opened", None),
        }
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="10,100", help="peer counts, comma-separated")
    ap.add_argument("--calls", type=int, default=50, help="calls of each kind per peer count")
    ap.add_argument("--source", type=Path, default=ROOT,
                    help="the checkout whose gateway package is measured")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("kernel_psk: needs root (network namespaces, netlink)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(args.source.resolve()))
    rows = []
    for n in args.peers.split(","):
        ns = f"kpsk{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            rows.append(asyncio.run(measure(ns, int(n), args.calls)))
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    print(json.dumps({"source": str(args.source), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
