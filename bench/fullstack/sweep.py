"""What one reconciliation pass costs the daemon at N tunnels, in its parts.

    .venv/bin/python -m bench.fullstack.sweep [--tunnels 10000] [--passes 3] [--source CHECKOUT]

Every ``daemon.reconcile_interval`` (30 s) the daemon re-applies each interface, checks every
keeper's key against one read of its interface, sweeps the handshakes from one dump per
interface and looks at every tunnel's status (gateway.daemon.periodic). The event loop runs
nothing else meanwhile. This builds one site of N ``qkd+pqc`` WireGuard tunnels on one hub
interface (the files of bench.memory; ``backend: record``, the KMS a closed port, so every tunnel
starts failed closed), runs the daemon until ``daemon_ready`` in a child process, then times
``--passes`` passes of those four steps (CPU of the process, ``time.process_time``) and prints
µs per tunnel for each. With ``--source`` another checkout is measured first with the same file
(before/after in one command: ``git worktree add /tmp/base REV``); the status step calls
``Daemon.refresh_status`` where the checkout has it, else ``publish_status``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.memory import closed_kms_config, make_pair, run_child

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import asyncio, json, sys, time
from gateway.config import load_config
from gateway.daemon import periodic
from gateway.daemon.app import Daemon
from gateway.telemetry import configure_logging
configure_logging("json", "error")
d = Daemon(load_config(sys.argv[1]))
passes = int(sys.argv[2])
n = len(d.keepers)
async def main():
    stop, ready = asyncio.Event(), asyncio.Event()
    emit = d.bus.emit
    def spy(event, *a, **kw):
        if event == "daemon_ready":
            ready.set()
        return emit(event, *a, **kw)
    d.bus.emit = spy
    task = asyncio.create_task(d.run(stop))
    await asyncio.wait_for(ready.wait(), 900)
    rows = []
    for _ in range(passes):
        t, t0 = {}, time.process_time()
        for iface in list(d.tunnels.interfaces.values()):
            await iface.reconcile()
        t["interfaces"], t0 = time.process_time() - t0, time.process_time()
        slots = {}
        for name, keeper in list(d.keepers.items()):
            await periodic._verify(d, name, keeper, slots)
        t["keys"], t0 = time.process_time() - t0, time.process_time()
        await periodic.observe_handshakes(d)
        t["handshakes"], t0 = time.process_time() - t0, time.process_time()
        stocks = {}
        for name in d.keepers:
            if hasattr(d, "refresh_status"):
                d.refresh_status(name, stocks)
            else:
                d.publish_status(name)
        t["status"] = time.process_time() - t0
        t["pass"] = sum(t.values())
        rows.append({k: round(v * 1e6 / n, 2) for k, v in t.items()})
    stop.set()
    await asyncio.wait_for(task, 300)
    print("RESULT " + json.dumps(rows), flush=True)
asyncio.run(main())
"""


def measure(config: Path, source: Path, passes: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = run_child(_CHILD, config, source, str(passes), timeout=1800)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=10_000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="another checkout to measure first with the same file (before)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkd-bench-sweep-") as tmp:
        config = closed_kms_config(make_pair(Path(tmp), args.tunnels))
        for src in [*args.source, ROOT]:
            rows = measure(config, src.resolve(), args.passes)
            median = {k: sorted(r[k] for r in rows)[len(rows) // 2] for k in rows[0]}
            print(json.dumps({"source": str(src), "tunnels": args.tunnels,
                              "us_per_tunnel_median": median, "passes": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
