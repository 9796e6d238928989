"""The site-router load over time: CPU, rekeys and context switches of both daemons, step by step.

    .venv/bin/python -m bench.fullstack.series [--tunnels 10000] [--seconds 240] [--step 10]

bench.startup gives one average over its window; this shows what the average is made of. The
full-stack pair of bench/fullstack/gateways.py (record data plane, ``--interval`` rotation,
default 120 s) keys every tunnel once, then for ``--seconds`` prints one row per ``--step``:
per daemon the on-CPU share of one core (schedstat of every thread), the rekeys completed and
the context switches per second in that step. With every tunnel keyed within the first tens of
seconds, their rotations come in waves (a burst every interval), with the daemon's periodic
work (the reconciliation pass, every 30 s) between them; a last line sums up the window.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.fullstack.gateways import GatewayPair
from bench.fullstack.procstat import sample

ROOT = Path(__file__).resolve().parents[2]
REKEYED = frozenset({"tunnel_rekeyed"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=10_000)
    ap.add_argument("--interval", type=float, default=120.0, help="rekey_interval, seconds")
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--step", type=float, default=10.0)
    ap.add_argument("--source", type=Path, default=ROOT,
                    help="checkout whose daemons run (default: this one, not the installed "
                         "package)")
    args = ap.parse_args()
    with GatewayPair(args.tunnels, args.interval, args.interval * 1.5,
                     source=args.source) as pair:
        keyed = pair.wait_keyed(120 + args.tunnels * 0.09)
        print(json.dumps({"tunnels": args.tunnels, "keyed_s": round(keyed, 1)}), flush=True)
        for s in pair.sites:
            s.log.skip()
        first = prev = {s.name: sample(s.pid) for s in pair.sites}
        total = {s.name: 0 for s in pair.sites}
        t0 = last = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(args.step)
            pair.check_alive()
            cur, now = {s.name: sample(s.pid) for s in pair.sites}, time.monotonic()
            span, row = now - last, {"t": round(now - t0)}
            for s in pair.sites:
                n = len(s.log.read(REKEYED))
                total[s.name] += n
                a, b = prev[s.name], cur[s.name]
                row[s.name] = {"cpu_share": round((b.cpu_ns - a.cpu_ns) / 1e9 / span, 3),
                               "rekeys_per_s": round(n / span, 1),
                               "ctx_switches_per_s": round((b.ctx_switches - a.ctx_switches)
                                                           / span)}
            print(json.dumps(row), flush=True)
            prev, last = cur, now
        span = last - t0
        print(json.dumps({"window_s": round(span, 1), **{
            k: {"cpu_share": round((prev[k].cpu_ns - first[k].cpu_ns) / 1e9 / span, 4),
                "rekeys_per_s": round(total[k] / span, 2),
                "cpu_ms_per_rekey": round((prev[k].cpu_ns - first[k].cpu_ns) / 1e6 / total[k], 3)
                if total[k] else None,
                "rss_mb": round(prev[k].rss_kb / 1024, 1)} for k in total}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
