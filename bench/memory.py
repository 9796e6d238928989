"""Where a daemon's memory goes at N tunnels: RSS at each start-up step, in a fresh interpreter.

    .venv/bin/python -m bench.memory --tunnels 10000 [--trace] [--source CHECKOUT]

Writes one site's configuration as bench.startup does (N ``qkd+pqc`` WireGuard tunnels on one
hub interface, ``backend: record``, rekey_interval 120 s), then, in a child process
(``QKD_GATEWAY_BENCH_DATAPLANE=record``, log level ``error``), reads RSS (/proc/self/statm):

* ``imports``: after importing the daemon (interpreter, cryptography, pydantic, aiohttp...);
* ``loaded``: after ``load_config`` of the file (the validated configuration, and what the
  allocator kept of parsing it);
* ``built``: after ``Daemon(cfg)`` (protocol node, keepers, installers, telemetry);
* ``started``: once ``Daemon.run`` has started every tunnel and settled memory (``daemon_ready``;
  the KMS URL points at a closed port, so no tunnel is keyed: every one starts failed closed,
  as after a restart without the data plane's keys).

With ``--trace``, tracemalloc runs from before the load and the top allocation sites (by file)
of the started daemon are listed: slower (~2x), and its own overhead is not in the RSS figures of
a run without it. With ``--source``, the same file is measured with another checkout's code
first (before/after in one command; ``git worktree add /tmp/base REV``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import asyncio, gc, json, os, sys, time, tracemalloc
trace = sys.argv[2] == "1"
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * page / 2**20, 1)
out = {}
from gateway.config import load_config
from gateway.daemon.app import Daemon
from gateway.telemetry import configure_logging
configure_logging("json", "error")
gc.collect(); out["imports"] = rss()
if trace:
    tracemalloc.start(1)
t0 = time.process_time()
cfg = load_config(sys.argv[1])
out["load_cpu_s"] = round(time.process_time() - t0, 2)
gc.collect(); out["loaded"] = rss()
d = Daemon(cfg)
gc.collect(); out["built"] = rss()
async def main():
    stop = asyncio.Event()
    ready = asyncio.Event()
    emit = d.bus.emit
    def spy(event, *a, **kw):
        if event == "daemon_ready":
            ready.set()
        return emit(event, *a, **kw)
    d.bus.emit = spy
    task = asyncio.create_task(d.run(stop))
    await asyncio.wait_for(ready.wait(), 900)
    out["started"] = rss()
    out["closed"] = sum(1 for k in d.keepers.values() if k.closed)
    out["tasks"] = len(asyncio.all_tasks())
    if trace:
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("filename")
        out["traced_mb"] = round(sum(s.size for s in stats) / 2**20, 1)
        out["top"] = [[s.traceback[0].filename.split("site-packages/")[-1]
                       .replace(os.getcwd() + "/", ""), round(s.size / 2**20, 2)]
                      for s in stats[:25]]
    stop.set()
    await asyncio.wait_for(task, 300)
asyncio.run(main())
print("RESULT " + json.dumps(out), flush=True)
"""


def write_config(directory: Path, n: int) -> Path:
    """One site's N-tunnel file, as bench.startup writes it (KMS URL: a closed port)."""
    from bench.fullstack.gateways import GatewayPair

    pair = GatewayPair(n, 120.0, 180.0)
    pair.root.rmdir()  # its own temporary directory: this one is used instead
    pair.root = directory
    pair.pki = directory / "pki"
    for s in pair.sites:
        s.directory = directory / s.name
    pair._materialize()
    pair.kme_urls = {s.kme_id: "https://127.0.0.1:9" for s in pair.sites}
    pair._write_configs()
    return pair.sites[0].directory / "config.yaml"


def measure(config: Path, source: Path, trace: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(source), "QKD_GATEWAY_BENCH_DATAPLANE": "record"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(config), "1" if trace else "0"],
                          capture_output=True, text=True, cwd=config.parent, env=env,
                          check=False, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res: dict[str, Any] = json.loads(line[7:])
            return res
    return {"error": (proc.stderr or proc.stdout)[-2000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=10_000)
    ap.add_argument("--trace", action="store_true", help="tracemalloc: top allocation sites")
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="another checkout to measure first with the same file (before)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkd-bench-memory-") as tmp:
        config = write_config(Path(tmp), args.tunnels)
        for src in [*args.source, ROOT]:
            res = measure(config, src.resolve(), args.trace)
            res = {"source": str(src), "tunnels": args.tunnels, **res}
            print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
