"""What one whole-device read costs the daemon on a big wireguard-go hub.

    python -m bench.fullstack.hubread [--peers 10,100,1000] [--reads 20]

The userspace backend confirms every PSK write, and every keeper verifies its key at each
reconcile pass, by reading the whole interface (``get=1`` on the UAPI socket, parsed into a
DeviceState by gateway.dataplane.uapi): one read per rekey per side, N reads per pass on a hub of
N peers. This times that read (client CPU from ``time.process_time`` and wall time) against a bare
wireguard-go in a throw-away namespace, grown to each peer count in turn (placeholder peers with
a PSK and one allowed IP each), next to one PSK write for scale and to ``get_peer`` (the same
answer, only the written peer's lines parsed: what a PSK write's confirmation and a keeper's
verify read since). Root and wireguard-go needed.

``--pass``: also one reconciliation pass's key checks both ways, the keepers each reading their
own peer (``get_peer`` per peer: what a pass did before) against one read of the whole interface
shared by all of them (``get`` once: what it does now), with wireguard-go's own CPU (it writes
the whole device for every read) from /proc/<pid>/schedstat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from gateway.dataplane.types import b64_to_hex
from gateway.dataplane.uapi import UapiClient

__all__ = ["main", "measure"]

#: wireguard-go creates its socket before it daemonises; its exit after the link goes is ~ms.
START_TIMEOUT_S, EXIT_WAIT_S = 20.0, 5.0


def _pub_hex() -> str:
    key = x25519.X25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _peers(first: int, last: int) -> str:
    return "".join(f"public_key={_pub_hex()}\npreshared_key={os.urandom(32).hex()}\n"
                   f"allowed_ip=10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32\n"
                   for i in range(first, last))


def _wg_cpu_ms(ifname: str) -> float:
    pids = subprocess.run(["pgrep", "-f", f"wireguard-go {ifname}"], capture_output=True,
                          text=True, timeout=5).stdout.split()
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0]) / 1e6
    return total


async def _pass(client: UapiClient, ifname: str, pubs: list[str]) -> dict[str, float]:
    """One pass's key checks: per keeper (before), then one shared read (after)."""
    g0, c0 = _wg_cpu_ms(ifname), time.process_time()
    for pub in pubs:
        await client.get_peer(pub)
    g1, c1 = _wg_cpu_ms(ifname), time.process_time()
    state = await client.get()
    held = {pub: state.peers[pub].preshared_key for pub in pubs}
    g2, c2 = _wg_cpu_ms(ifname), time.process_time()
    assert len(held) == len(pubs)
    return {"pass_per_keeper_cpu_ms": round((c1 - c0) * 1e3, 1),
            "pass_per_keeper_wireguard_go_ms": round(g1 - g0, 1),
            "pass_shared_cpu_ms": round((c2 - c1) * 1e3, 1),
            "pass_shared_wireguard_go_ms": round(g2 - g1, 1)}


async def _timed(counts: list[int], reads: int, ifname: str,
                 passes: bool = False) -> list[dict[str, Any]]:
    client = UapiClient(ifname)
    out: list[dict[str, Any]] = []
    have = 0
    for n in counts:
        if n > have:
            await client.set(_peers(have, n))
            have = n
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(reads):
            state = await client.get()
        c1, w1 = time.process_time(), time.perf_counter()
        assert len(state.peers) == n, len(state.peers)
        last = next(iter(state.peers))
        body = (f"public_key={b64_to_hex(last)}\nupdate_only=true\n"
                f"preshared_key={os.urandom(32).hex()}\n")
        for _ in range(reads):
            await client.set(body)
        c2, w2 = time.process_time(), time.perf_counter()
        for _ in range(reads):  # what a PSK write's confirmation reads (one peer parsed)
            peer = await client.get_peer(last)
        c3, w3 = time.process_time(), time.perf_counter()
        assert peer is not None
        out.append({"peers": n,
                    "peer_read_cpu_ms": round((c3 - c2) / reads * 1e3, 3),
                    "peer_read_wall_ms": round((w3 - w2) / reads * 1e3, 3),
                    "read_cpu_ms": round((c1 - c0) / reads * 1e3, 3),
                    "read_wall_ms": round((w1 - w0) / reads * 1e3, 3),
                    "psk_write_cpu_ms": round((c2 - c1) / reads * 1e3, 3),
                    "psk_write_wall_ms": round((w2 - w1) / reads * 1e3, 3)})
        if passes:
            out[-1].update(await _pass(client, ifname, list(state.peers)))
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def measure(counts: list[int], reads: int, passes: bool = False) -> list[dict[str, Any]]:
    tag = os.getpid()
    netns, ifname = f"qgdread{tag}", f"qgr{tag}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "wireguard-go", ifname], check=True,
                       capture_output=True, timeout=START_TIMEOUT_S,
                       env={**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
        return asyncio.run(_timed(counts, reads, ifname, passes))
    finally:
        # Deleting the link makes wireguard-go exit and remove its socket; the namespace goes.
        subprocess.run(["ip", "-n", netns, "link", "del", ifname], capture_output=True,
                       timeout=10)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
        deadline = time.monotonic() + EXIT_WAIT_S
        sock = f"/var/run/wireguard/{ifname}.sock"
        while os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fullstack.hubread", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="10,100,1000", help="peer counts, ascending")
    ap.add_argument("--reads", type=int, default=20, help="reads (and writes) per count")
    ap.add_argument("--pass", dest="passes", action="store_true",
                    help="also a reconciliation pass's key checks, per keeper and shared")
    args = ap.parse_args(argv)
    counts = sorted(int(x) for x in args.peers.split(","))
    print(json.dumps({"reads": args.reads,
                      "results": measure(counts, args.reads, args.passes)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
