"""ESP SA rollovers per second, and packets lost across rollovers, on a kernel with ESP.

Two sites in network namespaces joined by a veth, an EspTunnel (policy mode, AES-256-GCM) at
each end. One rollover is what the daemon does per rekey, for both sides: allocate an inbound
SPI, install the inbound SA, switch the outbound SA (make before break), retire the old inbound
SA. Figures:

* rollovers/s through EspTunnel, and as a ratio against the bare kernel work of the same
  rollover in the same run (the same ALLOCSPI/UPDSA/NEWSA/DELSA requests through XfrmClient
  without ownership checks, read-back or dumps): the cost of the safety checks;
* packets lost while rollovers run back to back under a 100/s ping, with the old inbound SA
  retired one rollover later (the daemon's grace period) and, for comparison, at once.

The development host has no ESP; run it in the kernel lab (QEMU TCG: slow, so read the ratios):

    bash scripts/kernel_lab.sh --exec '.venv/bin/python bench/bench_xfrm.py'

Elsewhere, on a kernel with esp4 and gcm, as root: `.venv/bin/python bench/bench_xfrm.py`.
Without ESP it prints one line saying so and exits 0 (so `make bench` runs the others).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.dataplane.xfrm import EspTunnel, EspTunnelSpec, XfrmClient, esp_unavailable
from gateway.dataplane.xfrm.model import SaParams
from gateway.keymaterial import Secret
from tests.netns_harness import Namespace, NetnsLab

A_OUT, B_OUT = "192.168.95.1", "192.168.95.2"
REQ_A, REQ_B = 0x51D0_0A01, 0x51D0_0A02
PING_INTERVAL = 0.01  # 100 packets/s


def specs() -> tuple[EspTunnelSpec, EspTunnelSpec]:
    return (EspTunnelSpec("bench-a", A_OUT, B_OUT, ("10.1.0.0/24",), ("10.2.0.0/24",), REQ_A),
            EspTunnelSpec("bench-b", B_OUT, A_OUT, ("10.2.0.0/24",), ("10.1.0.0/24",), REQ_B))


def sites(lab: NetnsLab) -> tuple[Namespace, Namespace]:
    na, nb = lab.namespace("a"), lab.namespace("b")
    lab.veth(na, f"{A_OUT}/24", nb, f"{B_OUT}/24")
    for ns, mine, theirs, gw in ((na, "10.1.0.1", "10.2.0.0/24", B_OUT),
                                 (nb, "10.2.0.1", "10.1.0.0/24", A_OUT)):
        ns.run("ip", "addr", "add", f"{mine}/32", "dev", "lo")
        ns.run("ip", "route", "add", theirs, "via", gw, "src", mine)
    return na, nb


class Pair:
    """The two ends and their current SPIs (A's inbound, B's inbound)."""

    def __init__(self, a: EspTunnel, b: EspTunnel) -> None:
        self.a, self.b = a, b
        self.spis: tuple[int, int] | None = None
        self.pending_retire: tuple[int, int] | None = None

    async def rollover(self, *, grace: bool) -> None:
        """One rekey of both directions. ``grace``: retire the previous epoch's inbound SAs one
        rollover later (as the daemon's grace period does), not at once."""
        k_ab, k_ba = Secret.random(36), Secret.random(36)
        spi_a, spi_b = await self.a.allocate_spi(), await self.b.allocate_spi()
        await self.a.install_inbound(spi_a, k_ba)
        await self.b.install_inbound(spi_b, k_ab)
        await self.a.activate_outbound(spi_b, k_ab)
        await self.b.activate_outbound(spi_a, k_ba)
        old, self.spis = self.spis, (spi_a, spi_b)
        if grace:
            old, self.pending_retire = self.pending_retire, old
        if old is not None:
            await self.a.retire_inbound(old[0])
            await self.b.retire_inbound(old[1])


async def bare_rollovers(na: Namespace, nb: Namespace, n: int) -> list[float]:
    """The same kernel requests as a rollover, nothing else (no GETSA, no dumps, no checks)."""
    a_ip, b_ip = ip_address(A_OUT), ip_address(B_OUT)
    times = []
    async with XfrmClient(na.name) as xa, XfrmClient(nb.name) as xb:
        prev: tuple[int, int] | None = None
        for _ in range(n):
            t0 = time.perf_counter()
            k_ab, k_ba = Secret.random(36), Secret.random(36)
            spi_a = await xa.allocate_spi(b_ip, a_ip, REQ_A)
            spi_b = await xb.allocate_spi(a_ip, b_ip, REQ_B)
            await xa.update_sa(SaParams(b_ip, a_ip, spi_a, REQ_A, k_ba))
            await xb.update_sa(SaParams(a_ip, b_ip, spi_b, REQ_B, k_ab))
            await xa.add_sa(SaParams(a_ip, b_ip, spi_b, REQ_A, k_ab))
            await xb.add_sa(SaParams(b_ip, a_ip, spi_a, REQ_B, k_ba))
            if prev is not None:
                await xa.delete_sa(b_ip, prev[1])  # old outbound
                await xb.delete_sa(a_ip, prev[0])
                await xa.delete_sa(a_ip, prev[0])  # old inbound
                await xb.delete_sa(b_ip, prev[1])
            prev = (spi_a, spi_b)
            times.append(time.perf_counter() - t0)
        await xa.flush_owned({REQ_A})
        await xb.flush_owned({REQ_B})
    return times


async def tunnel_rollovers(pair: Pair, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await pair.rollover(grace=False)
        times.append(time.perf_counter() - t0)
    return times


async def loss_under_rollovers(na: Namespace, pair: Pair, n: int, *, grace: bool
                               ) -> dict[str, Any]:
    await pair.rollover(grace=grace)
    proc = await asyncio.create_subprocess_exec(
        *na.cmd("ping", "-n", "-q", "-I", "10.1.0.1", "-i", str(PING_INTERVAL), "-W", "2",
                "10.2.0.1"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    await asyncio.sleep(1.0)  # the ping is flowing before the first measured rollover
    t0 = time.perf_counter()
    for _ in range(n):
        await pair.rollover(grace=grace)
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(1.0)
    proc.send_signal(2)  # SIGINT: ping prints its summary
    out, _ = await proc.communicate()
    text = out.decode()
    sent = int(text.split(" packets transmitted")[0].split()[-1])
    received = int(text.split(" received")[0].split()[-1])
    return {"grace": grace, "rollovers": n, "seconds": round(elapsed, 2),
            "rollovers_per_s": round(n / elapsed, 2), "sent": sent, "lost": sent - received}


def stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"rollovers_per_s": round(len(times) / sum(times), 2),
            "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)}


async def main(args: argparse.Namespace) -> int:
    # The data plane's info events would be printed per call; the figures are about the calls.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with NetnsLab(prefix="xb") as lab:
        na, nb = sites(lab)
        reason = await esp_unavailable()
        if reason is not None:
            why = reason.split(";")[0]
            print(f"bench_xfrm: skipped: no ESP with AES-GCM on this kernel ({why}); run it in "
                  "the kernel lab: bash scripts/kernel_lab.sh --exec "
                  "'.venv/bin/python bench/bench_xfrm.py'")
            return 0
        bare = await bare_rollovers(na, nb, args.rollovers)
        spec_a, spec_b = specs()
        a, b = EspTunnel(spec_a, netns=na.name), EspTunnel(spec_b, netns=nb.name)
        await a.prepare()
        await b.prepare()
        pair = Pair(a, b)
        tunnel = await tunnel_rollovers(pair, args.rollovers)
        with_grace = await loss_under_rollovers(na, pair, args.loss_rollovers, grace=True)
        no_grace = await loss_under_rollovers(na, pair, args.loss_rollovers, grace=False)
        await a.teardown()
        await b.teardown()
        a.close()
        b.close()
    result = {"bare": stats(bare), "tunnel": stats(tunnel),
              "ratio_tunnel_over_bare": round(statistics.median(tunnel) / statistics.median(bare),
                                              2),
              "loss_with_grace": with_grace, "loss_without_grace": no_grace}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"rollover (both sides), {args.rollovers} each:")
    for name in ("bare", "tunnel"):
        r = result[name]
        print(f"  {name:7} {r['rollovers_per_s']:8.1f}/s  p50 {r['p50_ms']:7.2f} ms"
              f"  p99 {r['p99_ms']:7.2f} ms")
    print(f"  EspTunnel / bare kernel work (median): {result['ratio_tunnel_over_bare']}x")
    for r in (with_grace, no_grace):
        label = "old inbound retired one rollover later" if r["grace"] else "retired at once"
        print(f"loss, {r['rollovers']} back-to-back rollovers ({r['rollovers_per_s']}/s) under a "
              f"100/s ping, {label}: {r['lost']} of {r['sent']} lost")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollovers", type=int, default=50, help="rollovers per rate phase")
    parser.add_argument("--loss-rollovers", type=int, default=30,
                        help="rollovers per loss phase (under the ping)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    sys.exit(asyncio.run(main(parser.parse_args())))
