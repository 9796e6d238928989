"""Throughput and loss through a real tunnel while it rotates every second, against the same
tunnel not rotating (ratio), and the rekey latency (p50/p99) the daemons report.

Needs root, iperf3 and wireguard-go (or kernel WireGuard). Two sites in network namespaces,
real `qkd-gateway run` daemons, the embedded KME network (tests/e2e/lab.py). Run:

    .venv/bin/python bench/bench_tunnel.py [--seconds 10]

Each phase: iperf3 TCP for SECONDS from the hub to the spoke through the tunnel while a 20/s
ping runs alongside it. The baseline phase uses a rekey interval of one hour (no rotation during
the measurement), the rotating phase one second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.lab import Lab


async def phase(rekey_interval: float, seconds: float, iperf: bool = True) -> dict[str, Any]:
    async with Lab(rekey_interval=rekey_interval, reject_after=max(3.0, rekey_interval * 2)) as lab:
        await lab.start_daemons()
        names = [s.name for s in lab.plan.sites]
        await lab.wait_for(lambda: all(lab.epochs(n) for n in names), 30, "the first key")
        t = lab.tunnel
        hub, spoke = lab.plan.by_name[t.hub], lab.plan.by_name[t.spoke]
        server = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", spoke.netns, "iperf3", "-s", "-1",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await asyncio.sleep(0.5)
            pinger = lab.pinger()
            ping = asyncio.create_task(pinger.run())
            before = len(lab.epochs(t.hub))
            first_event = {n: len(lab.events(n, "tunnel_rekeyed")) for n in names}
            mbit_s = float("nan")
            if iperf:
                out = await asyncio.to_thread(
                    subprocess.run,
                    ["ip", "netns", "exec", hub.netns, "iperf3", "-c",
                     str(t.address(t.spoke).ip), "-t", f"{seconds:g}", "-J"],
                    capture_output=True, text=True, timeout=seconds + 30, check=True)
                mbit_s = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
            else:
                await asyncio.sleep(seconds)
            pinger.stop()
            stats = await ping
        finally:
            if server.returncode is None:
                server.kill()
            await server.wait()
        latencies = [e["rekey_ms"] for n in names
                     for e in lab.events(n, "tunnel_rekeyed")[first_event[n]:]
                     if e.get("rekey_ms") is not None]
        return {
            "failed_closed": sum(len(lab.events(n, "tunnel_failed_closed")) - 1 for n in names),
            "mbit_s": mbit_s,
            "rotations": len(lab.epochs(t.hub)) - before,
            "ping_sent": stats.sent,
            "ping_lost": stats.lost,
            "rekey_ms": latencies,
        }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "mbit_s": statistics.median(r["mbit_s"] for r in runs),
        **{k: sum(r[k] for r in runs) for k in ("rotations", "ping_sent", "ping_lost",
                                                  "failed_closed")},
        "rekey_ms": [x for r in runs for x in r["rekey_ms"]],
    }


async def main(seconds: float, rounds: int, out: Path | None) -> int:
    # Alternate the phases (base, rotating, base, rotating, ...): a shared machine drifts, and
    # each round's ratio compares neighbours.
    bases, rots, ratios = [], [], []
    for _ in range(rounds):
        bases.append(await phase(3600.0, seconds))
        rots.append(await phase(1.0, seconds))
        ratios.append(rots[-1]["mbit_s"] / bases[-1]["mbit_s"])
    base, rot = merge(bases), merge(rots)
    idle = await phase(1.0, seconds * 2, iperf=False)
    ratio = statistics.median(ratios)
    lat = idle["rekey_ms"]
    print(f"baseline (no rotation): {base['mbit_s']:.0f} Mbit/s, ping lost "
          f"{base['ping_lost']}/{base['ping_sent']}")
    print(f"rotating every 1 s:     {rot['mbit_s']:.0f} Mbit/s, ping lost "
          f"{rot['ping_lost']}/{rot['ping_sent']}, {rot['rotations']} rotations, "
          f"{rot['failed_closed']} fail-closed")
    print(f"rotating every 1 s, no iperf3: ping lost {idle['ping_lost']}/{idle['ping_sent']}, "
          f"{idle['rotations']} rotations")
    print(f"throughput ratio rotating/baseline, median of {rounds} alternating rounds: "
          f"{ratio:.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)}; target >= 0.99)")
    if lat:
        print(f"rekey latency (no iperf3) over {len(lat)} activations, both sides: p50 "
              f"{statistics.median(lat):.2f} ms, p99 {pct(lat, 0.99):.2f} ms  (target p99 <= 10)")
    print(f"rekey latency under iperf3 load: p50 {statistics.median(rot['rekey_ms']):.2f} ms, "
          f"p99 {pct(rot['rekey_ms'], 0.99):.2f} ms")
    if out is not None:
        await asyncio.to_thread(write_json, out, {
            "throughput_ratio_rotating": ratio,
            "throughput_ratio_rounds": ratios,
            "mbit_s_baseline": base["mbit_s"], "mbit_s_rotating": rot["mbit_s"],
            # Pings lost while rotating every second with nothing else on the link; under iperf3
            # the baseline (no rotation) loses pings too, so those are shown side by side.
            "rotation_packets_lost": idle["ping_lost"],
            "rotation_packets_sent": idle["ping_sent"],
            "ping_lost_under_iperf3": {"baseline": [base["ping_lost"], base["ping_sent"]],
                                       "rotating": [rot["ping_lost"], rot["ping_sent"]]},
            "rotations": rot["rotations"] + idle["rotations"],
            "failed_closed": rot["failed_closed"] + idle["failed_closed"],
            "rekey_ms_p50_idle": statistics.median(lat) if lat else None,
            "rekey_ms_p99_idle": pct(lat, 0.99) if lat else None,
        })
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.seconds, args.rounds, args.out)))
