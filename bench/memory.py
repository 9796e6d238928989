"""Where a daemon's memory goes at N tunnels: RSS at each start-up step, in a fresh interpreter.

    .venv/bin/python -m bench.memory --tunnels 10000 [--keyed] [--trace] [--source CHECKOUT]

Writes one site's configuration as bench.startup does (N ``qkd+pqc`` WireGuard tunnels on one
hub interface, ``backend: record``, rekey_interval 120 s), then, in a child process
(``QKD_GATEWAY_BENCH_DATAPLANE=record``, log level ``error``), reads RSS (/proc/self/statm):

* ``imports``: after importing the daemon (interpreter, cryptography, pydantic, aiohttp...);
* ``loaded``: after ``load_config`` of the file (the validated configuration, and what the
  allocator kept of parsing it);
* ``built``: after ``Daemon(cfg)`` (protocol node, keepers, installers, telemetry);
* ``started``: once ``Daemon.run`` has started every tunnel and settled memory (``daemon_ready``;
  the KMS URL points at a closed port, so no tunnel is keyed: every one starts failed closed,
  as after a restart without the data plane's keys);
* with ``--keyed``: a real KME network (``qkd-gateway kms-sim``) and the other site's daemon
  (``qkd-gateway run``, a subprocess) run too, and ``keyed`` is read once every tunnel of the
  measured daemon has completed its first rekey (``keyed_s`` after ``daemon_ready``; at most
  ``--timeout`` seconds, else ``keyed_count`` says how many were).

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

from bench.fullstack.gateways import GatewayPair, _start, _stop
from bench.fullstack.logs import JsonLog

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
keyed_limit = float(sys.argv[3])
async def main():
    stop = asyncio.Event()
    ready = asyncio.Event()
    all_keyed = asyncio.Event()
    keyed = set()
    emit = d.bus.emit
    def spy(event, *a, **kw):
        if event == "daemon_ready":
            ready.set()
        elif event == "tunnel_rekeyed":
            keyed.add(kw.get("tunnel"))
            if len(keyed) >= len(d.keepers):
                all_keyed.set()
        return emit(event, *a, **kw)
    d.bus.emit = spy
    task = asyncio.create_task(d.run(stop))
    await asyncio.wait_for(ready.wait(), 900)
    out["started"] = rss()
    if keyed_limit > 0:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(all_keyed.wait(), keyed_limit)
        except TimeoutError:
            pass
        gc.collect()
        out["keyed"] = rss()
        out["keyed_s"] = round(time.monotonic() - t0, 1)
        out["keyed_count"] = len(keyed)
    out["closed"] = sum(1 for k in d.keepers.values() if k.closed)
    tasks = asyncio.all_tasks()
    out["tasks"] = len(tasks)
    kinds = {}
    for t in tasks:
        code = t.get_coro().cr_code if hasattr(t.get_coro(), "cr_code") else None
        kind = code.co_qualname if code is not None else type(t.get_coro()).__name__
        kinds[kind] = kinds.get(kind, 0) + 1
    out["task_kinds"] = sorted(kinds.items(), key=lambda kv: -kv[1])[:4]
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


def make_pair(directory: Path, n: int) -> GatewayPair:
    """Both sites' N-tunnel files and keys, as bench.startup writes them, in ``directory``."""
    pair = GatewayPair(n, 120.0, 180.0)
    pair.root.rmdir()  # its own temporary directory: this one is used instead
    pair.root = directory
    pair.pki = directory / "pki"
    for s in pair.sites:
        s.directory = directory / s.name
        s.log = JsonLog(s.directory / "daemon.log")
    pair.kms_log = JsonLog(directory / "kms-sim.log")
    pair._materialize()
    return pair


def closed_kms_config(pair: GatewayPair) -> Path:
    """The first site's configuration with its KMS at a closed port (no tunnel is keyed: every
    one starts failed closed); its path."""
    pair.kme_urls = {s.kme_id: "https://127.0.0.1:9" for s in pair.sites}
    pair._write_configs()
    return pair.sites[0].directory / "config.yaml"


def run_child(child: str, config: Path, source: Path, *args: str, timeout: float) -> Any:
    """Run ``child`` (Python source) with ``source``'s code and the record data plane, in the
    configuration's directory, with ``config`` and ``args`` as its argv; the JSON it printed
    after ``RESULT ``. Raises RuntimeError with the end of its output if it printed none."""
    env = {**os.environ, "PYTHONPATH": str(source), "QKD_GATEWAY_BENCH_DATAPLANE": "record"}
    proc = subprocess.run([sys.executable, "-c", child, str(config), *args],
                          capture_output=True, text=True, cwd=config.parent, env=env,
                          check=False, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError((proc.stderr or proc.stdout)[-2000:])


def measure(config: Path, source: Path, trace: bool, keyed_limit: float) -> dict[str, Any]:
    try:
        res: dict[str, Any] = run_child(_CHILD, config, source, "1" if trace else "0",
                                        str(keyed_limit), timeout=1800 + keyed_limit)
        return res
    except RuntimeError as exc:
        return {"error": str(exc)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=10_000)
    ap.add_argument("--trace", action="store_true", help="tracemalloc: top allocation sites")
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="another checkout to measure first with the same file (before)")
    ap.add_argument("--keyed", action="store_true",
                    help="with a KME network and the peer daemon: RSS once every tunnel is keyed")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="--keyed: longest wait for every tunnel's first key (seconds)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkd-bench-memory-") as tmp:
        pair = make_pair(Path(tmp), args.tunnels)
        try:
            for src in [*args.source, ROOT]:
                if args.keyed:  # a fresh KME network and peer for each run: same start
                    pair._start_kms()
                    pair._write_configs()
                    peer = pair.sites[1]
                    peer.proc = _start([sys.executable, "-m", "gateway", "run", "--config",
                                        str(peer.directory / "config.yaml")],
                                       peer.directory / "daemon.log",
                                       {"QKD_GATEWAY_BENCH_DATAPLANE": "record",
                                        "PYTHONPATH": str(src.resolve())})
                    config = pair.sites[0].directory / "config.yaml"
                else:
                    config = closed_kms_config(pair)
                res = measure(config, src.resolve(), args.trace,
                              args.timeout if args.keyed else 0.0)
                res = {"source": str(src), "tunnels": args.tunnels, **res}
                print(json.dumps(res), flush=True)
                pair.stop_daemons()
                _stop(pair.kms)
                for s in pair.sites:  # the next run starts from empty state directories
                    for f in (s.directory / "state").glob("**/*"):
                        if f.is_file():
                            f.unlink()
        finally:
            pair.stop_daemons()
            _stop(pair.kms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
