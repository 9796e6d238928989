"""Helpers of bench_protocol.py: idle wake-ups of real Endpoints, CPU per rekey vs tunnel count.

The idle child uses only the API that wire version 1 had too (Node, PeerConfig, Endpoint), so the
same file measures the code before this change (run it from a checkout of the old commit).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.identity import SiteIdentity
from gateway.protocol import Endpoint, Mode, Node, PeerAddress, PeerConfig, Timers, TunnelPolicy
from tests.protocol.harness import Site

# Idle: nothing due but keepalives (10 s) once every tunnel has its first key.
IDLE_TIMERS = Timers(rekey_after=3600.0, rekey_after_backup=3900.0, reject_after=7200.0)


def _switches() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise RuntimeError("no voluntary_ctxt_switches in /proc/self/status")


async def _idle_child(tunnels: int, seconds: float) -> dict[str, Any]:
    ia, ib = SiteIdentity.generate(), SiteIdentity.generate()
    pols = tuple(TunnelPolicy(f"t{i:05d}", Mode.PQC) for i in range(tunnels))
    na = Node(ia, "SAE_A", {"b": PeerConfig("SAE_B", ib.public(), pols)}, timers=IDLE_TIMERS)
    nb = Node(ib, "SAE_B", {"a": PeerConfig("SAE_A", ia.public(), pols)}, timers=IDLE_TIMERS)
    loop = asyncio.get_running_loop()
    eps: dict[str, Endpoint] = {}

    def runner(site: Site, name: str) -> Callable[[Any], None]:
        def on_action(a: Any) -> None:
            ev = site.perform(a)
            site.actions.clear()
            site.installed.clear()
            if ev is not None:
                loop.call_soon(eps[name].handle, ev)
        return on_action

    sa, sb = Site(na, {}), Site(nb, {})
    eps["a"], eps["b"] = Endpoint(na, runner(sa, "a")), Endpoint(nb, runner(sb, "b"))
    port = await eps["b"].listen("127.0.0.1", 0)
    eps["a"].dial(PeerAddress("b", "127.0.0.1", port))
    started, cpu_started = time.monotonic(), time.process_time()

    def keyed() -> bool:
        return all(na.tunnel_status(p.name).active_epoch and nb.tunnel_status(p.name).active_epoch
                   for p in pols)

    while not keyed():  # noqa: ASYNC110 (polls the nodes it measures; there is no event)
        await asyncio.sleep(1.0)
    keyed_s, keyed_cpu = time.monotonic() - started, time.process_time() - cpu_started
    await asyncio.sleep(2.0)
    s0, c0, t0 = _switches(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    s1, c1, t1 = _switches(), time.process_time(), time.monotonic()
    for ep in eps.values():
        await ep.aclose()
    return {"tunnels": tunnels, "wakeups_per_s": round((s1 - s0) / (t1 - t0), 2),
            "cpu_share": round((c1 - c0) / (t1 - t0), 5),
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "first_keys_s": round(keyed_s, 1), "first_keys_cpu_s": round(keyed_cpu, 1)}


def idle_rows(counts: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        out = subprocess.run([sys.executable, __file__, str(n), str(seconds)], check=True,
                             capture_output=True, text=True, timeout=seconds + 600,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def scale_rows(counts: list[int], time_protocol: Callable[..., tuple[float, float, int]],
               time_floor: Callable[[int], float]) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        floor = time_floor(50)
        _wall, cpu, done = time_protocol(max(1, 2000 // n), n)
        rows.append({"tunnels": n, "rekeys": done, "cpu_us_per_rekey_both_sides":
                     round(cpu * 1e6, 1), "crypto_floor_us": round(floor * 1e6, 1),
                     "ratio": round(cpu / floor, 2)})
    return rows


if __name__ == "__main__":
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    print(json.dumps(asyncio.run(_idle_child(int(sys.argv[1]), float(sys.argv[2])))))
