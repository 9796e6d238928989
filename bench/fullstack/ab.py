"""Before/after of a daemon change, in one command: the full-stack gateway pair run alternately
from another revision (a temporary git worktree) and from this checkout.

    .venv/bin/python -m bench.fullstack.ab --base HEAD~1 [--tunnels 16] [--pairs 4] [--interval 1]

Prints, per side, the median CPU ms per rekey (both daemons + KME), the daemons' share of it,
p50/p99 rekey latency and the idle wake-ups/s, and the median of the per-pair ratios
(after / before): alternating neighbours cancel most of a shared machine's drift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.fullstack.ours import measure_idle, measure_rotating

ROOT = Path(__file__).resolve().parents[2]


def _med(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision of the 'before' daemons")
    ap.add_argument("--after", type=Path, default=ROOT,
                    help="checkout of the 'after' daemons (default: this one)")
    ap.add_argument("--tunnels", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--interval", type=float, default=1.0,
                    help="rekey interval (s): 1 rotates as fast as the pair can; longer ones "
                         "give a site router's pace (use a window of whole intervals)")
    ap.add_argument("--reject-after", type=float, default=600.0,
                    help="long: at large N every tunnel stays due and nothing fails closed")
    ap.add_argument("--window", type=float, default=8.0)
    ap.add_argument("--idle", action="store_true", help="also compare idle wake-ups/s and CPU")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkd-bench-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True)
        try:
            res: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            idle: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for i in range(args.pairs):
                for side, src in (("before", base), ("after", args.after)):
                    r = measure_rotating(args.tunnels, args.window, args.interval,
                                         args.reject_after, source=src)
                    res[side].append(r)
                    r["keys_wasted"] = r["qkd"]["keys_wasted"]  # whole run, by key ID
                    r["qkd_bits_per_rekey"] = r["qkd"]["qkd_bits_per_rekey"]
                    print(f"pair {i + 1} {side}: {r['cpu_ms_per_rekey']:.3f} ms/rekey, "
                          f"p99 {r['rekey_ms_p99']} ms, keys wasted {r['keys_wasted']} of "
                          f"{r['rekeys']:g} rekeys", flush=True)
                    if args.idle:
                        idle[side].append(measure_idle(args.tunnels, args.window, source=src))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                           check=False, capture_output=True)
    out: dict[str, Any] = {"base": args.base, "tunnels": args.tunnels, "pairs": args.pairs}
    for side in ("before", "after"):
        out[side] = {k: _med(res[side], k) for k in
                     ("cpu_ms_per_rekey", "cpu_ms_per_rekey_daemons", "rekey_ms_p50",
                      "rekey_ms_p99", "rekeys_per_s", "keys_wasted", "qkd_bits_per_rekey")}
        out[side]["keys_wasted_total"] = sum(r["keys_wasted"] or 0 for r in res[side])
        out[side]["rekeys_total"] = sum(r["rekeys"] for r in res[side])
        if args.idle:
            out[side]["idle_wakeups_per_s"] = statistics.median(
                max(v for k, v in r["wakeups_per_s"].items() if k != "kms") for r in idle[side])
            out[side]["idle_cpu_share"] = statistics.median(
                max(v for k, v in r["cpu_share"].items() if k != "kms") for r in idle[side])
    out["ratio_cpu_per_rekey"] = statistics.median(
        a["cpu_ms_per_rekey"] / b["cpu_ms_per_rekey"]
        for a, b in zip(res["after"], res["before"], strict=True))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
