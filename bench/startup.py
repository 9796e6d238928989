"""Start-up at scale: how long N tunnels take to load, start and key, old code against new.

    .venv/bin/python -m bench.startup --tunnels 10000 [--source CHECKOUT] [--load-only]

Per run (the full-stack gateway pair of bench/fullstack/gateways.py, record data plane,
rekey_interval 120 s):
* ``load_s``: ``load_config`` of one site's file in this process (YAML walk, validation,
  cross checks), median of 3; with ``--source`` that checkout's loader, in a child process;
* ``ready_s``: the daemon's spawn to its ``daemon_ready`` event (keepers started, state written,
  listening), the slower of the two daemons;
* ``keyed_s``: spawn to every tunnel keyed once on both sites;
* CPU seconds of each daemon up to ``ready`` and up to ``keyed``, RSS once keyed, and the size
  of a ``qkd-gateway status`` answer;
* with ``--window S``: then S seconds of the site-router load (every tunnel rotating every
  120 s): each daemon's on-CPU share of one core, context switches/s, RSS, rekeys/s.
Several ``--source`` values alternate with this checkout (``--rounds``), so a shared machine's
drift falls on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.fullstack.gateways import STATUS_TIMEOUT, GatewayPair
from bench.fullstack.procstat import sample
from gateway.daemon.control import request

ROOT = Path(__file__).resolve().parent.parent
INTERVAL, REJECT = 120.0, 180.0
#: Longest wait for both daemons to be ready (a loaded 2-core machine: minutes at 10,000).
START_LIMIT = 900.0

_LOAD = """
import sys, time, statistics
from pathlib import Path
from gateway.config import load_config
p = Path(sys.argv[1]); runs = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    try:
        load_config(p)
    except Exception as exc:
        print("ERROR", str(exc).splitlines()[0:3]); sys.exit(0)
    runs.append(time.perf_counter() - t)
print(statistics.median(runs))
"""


def _ts(rec: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(rec["timestamp"]).replace("Z", "+00:00")).timestamp()


def time_load(config: Path, source: Path | None, repeat: int = 3) -> float | str:
    env = {"PYTHONPATH": str(source or ROOT)}
    out = subprocess.run([sys.executable, "-c", _LOAD, str(config), str(repeat)],
                         capture_output=True, text=True, cwd=config.parent,
                         env={**__import__("os").environ, **env}, check=False)
    text = out.stdout.strip() or out.stderr.strip()[-300:]
    try:
        return float(text)
    except ValueError:
        return text


def _router_window(pair: GatewayPair, seconds: float) -> dict[str, Any]:
    """Every tunnel keyed, rotating every INTERVAL: what each daemon costs over ``seconds``
    (on-CPU share of one core, context switches per second, RSS, rekeys completed)."""
    for s in pair.sites:
        s.log.skip()
    before = {s.name: sample(s.pid) for s in pair.sites}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {s.name: sample(s.pid) for s in pair.sites}
    span = time.monotonic() - t0
    rekeys = {s.name: len(s.log.read(frozenset({"tunnel_rekeyed"}))) for s in pair.sites}
    closed = {s.name: len(s.log.read(frozenset({"tunnel_failed_closed"}))) for s in pair.sites}
    return {
        "window_s": round(span, 1),
        "cpu_share": {k: round((after[k].cpu_ns - before[k].cpu_ns) / 1e9 / span, 4)
                      for k in after},
        "runqueue_share": {k: round((after[k].runqueue_ns - before[k].runqueue_ns) / 1e9 / span,
                                    4) for k in after},
        "wakeups_per_s": {k: round((after[k].ctx_switches - before[k].ctx_switches) / span, 1)
                          for k in after},
        "rss_mb": {k: round(after[k].rss_kb / 1024, 1) for k in after},
        "fds": {k: after[k].fds for k in after},
        "rekeys_per_s": {k: round(v / span, 2) for k, v in rekeys.items()},
        "failed_closed_in_window": closed,
    }


def run(n: int, source: Path | None, load_only: bool, timeout: float,
        window: float = 0.0, time_config: bool = True) -> dict[str, Any]:
    pair = GatewayPair(n, INTERVAL, REJECT, source=source)
    res: dict[str, Any] = {"tunnels": n, "source": str(source) if source else "this checkout"}
    if load_only:
        try:
            pair.start_kms_only()
            pair._write_configs()
            res["load_s"] = time_load(pair.sites[0].directory / "config.yaml", source)
        finally:
            pair.__exit__()
        return res
    with pair:
        spawned = time.time()  # __enter__ wrote the files and has just spawned the daemons
        if time_config:
            res["load_s"] = time_load(pair.sites[0].directory / "config.yaml", source)
        ready: dict[str, float] = {}
        starting: dict[str, float] = {}
        cpu_ready: dict[str, float] = {}
        keyed: dict[str, set[str]] = {s.name: set() for s in pair.sites}
        # ``timeout`` bounds the keying, counted once both daemons are ready (start-up is not
        # keying); START_LIMIT bounds the start-up itself.
        deadline: float | None = None
        hard = time.monotonic() + START_LIMIT + timeout
        while True:
            pair.check_alive()
            for s in pair.sites:
                for rec in s.log.read(frozenset({"daemon_starting", "daemon_ready",
                                                  "tunnel_rekeyed"})):
                    if rec["event"] == "daemon_starting":  # configuration loaded
                        starting[s.name] = _ts(rec)
                    elif rec["event"] == "daemon_ready":
                        res.setdefault("starting_to_ready_s", {})[s.name] = round(
                            _ts(rec) - starting.get(s.name, spawned), 2)
                        ready[s.name] = _ts(rec) - spawned
                        cpu_ready[s.name] = sample(s.pid).cpu_ns / 1e9
                    else:
                        keyed[s.name].add(rec["tunnel"])
            if all(len(v) >= n for v in keyed.values()):
                break
            now = time.monotonic()
            if deadline is None and len(ready) == 2:
                deadline = now + timeout
            if (deadline is not None and now > deadline) or now > hard:
                res["keyed_after_timeout"] = {k: len(v) for k, v in keyed.items()}
                break
            time.sleep(0.2)
        res["keyed_s"] = round(time.time() - spawned, 2)
        if window > 0:
            res["router"] = _router_window(pair, window)
        res["ready_s"] = round(max(ready.values()), 2) if len(ready) == 2 else None
        res["cpu_s_to_ready"] = {k: round(v, 2) for k, v in cpu_ready.items()}
        samples = {s.name: sample(s.pid) for s in pair.sites}
        res["cpu_s_to_keyed"] = {k: round(v.cpu_ns / 1e9, 2) for k, v in samples.items()}
        res["rss_mb_keyed"] = {k: round(v.rss_kb / 1024, 1) for k, v in samples.items()}
        t0 = time.monotonic()
        try:
            st = asyncio.run(request(pair.sites[0].directory / "control.sock",
                                     {"cmd": "status"}, timeout=STATUS_TIMEOUT))
            res["status_bytes"] = len(json.dumps(st))
            res["status_ok"] = bool(st.get("ok"))
            res["status_error"] = st.get("error")
        except Exception as exc:  # the figure is the failure
            res["status_error"] = f"{type(exc).__name__}: {exc}"
        res["status_s"] = round(time.monotonic() - t0, 2)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=10_000)
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="another checkout to run alternately with this one (before)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--load-only", action="store_true", help="only time load_config")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--window", type=float, default=0.0,
                    help="then measure this many seconds of rotation (CPU share, wake-ups, RSS)")
    args = ap.parse_args()
    # `timeout` or Ctrl-C: leave through GatewayPair.__exit__, which stops the daemons.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for src in [*args.source, None]:
            r = run(args.tunnels, src, args.load_only, args.timeout, args.window)
            print(json.dumps(r), flush=True)
            results.append(r)
    loads = [r["load_s"] for r in results if isinstance(r.get("load_s"), float)]
    if loads:
        print(f"median load_s {statistics.median(loads):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
