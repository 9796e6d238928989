"""Full-stack rekeys: two real `qkd-gateway run` daemons with the embedded KME network over
mutual TLS, N tunnels rotating as fast as the configuration allows, side by side with a
strongSwan charon pair rekeying CHILD_SAs as fast as it goes, and the cost floor, in one command.

Needs root (charon runs in network namespaces) and strongSwan (see bench/fullstack/charon.py).
Run:

    .venv/bin/python bench/bench_fullstack.py [--rotating 1,16,100,1000] [--idle 1,10000]
                                              [--pairs 3] [--source CHECKOUT]

Tunnel counts this checkout cannot carry (tunnels per peer, configuration size) are reported as
null with the reason. Per tunnel count N:
* rotating: rekey_interval 1 s (the configuration's minimum) and reject_after 600 s, so that at
  large N every tunnel is always due and the daemons rekey as fast as they can without failing
  closed; a window of --window seconds after every tunnel is keyed: completed rekeys/s, on-CPU
  ms per rekey (both daemons and the KME process, /proc/<pid>/task/*/schedstat), p50/p99 of the
  daemons' rekey_ms, KMS requests per rekey, RSS and fds, QKD keys taken vs used;
* idle: rekey_interval 120 s, every tunnel keyed once, then a window with no rotation due: CPU
  share and wake-ups/s (context switches of all threads) per daemon, RSS, fds; at 10,000
  tunnels instead the site-router load of bench/startup.py: start (seconds to ready), keying
  for at most ROUTER_KEY_WAIT s, then a window of rotation every 120 s (CPU share, wake-ups/s,
  RSS per daemon);
* charon: N CHILD_SAs under min(4, N) IKE SAs, every CHILD_SA rekeyed once per round.
Ratios against charon come from --pairs alternating runs (gateway, charon, gateway, ...) at the
comparison size; the floor (crypto of one rekey + one bare mutual-TLS GET per KMS request) is
timed in the same command. Writes bench/results/fullstack.json and docs/img/bench-fullstack.svg.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fullstack import charon  # noqa: E402
from bench.fullstack.floor import crypto_ms, mtls_get_ms  # noqa: E402
from bench.fullstack.ours import measure_idle, measure_rotating  # noqa: E402
from bench.fullstack.svgplot import Panel, Series, render  # noqa: E402
from bench.startup import run as router_run  # noqa: E402
from gateway.config.loader import MAX_VALUES  # noqa: E402
from gateway.protocol.constants import MAX_TUNNELS_PER_PEER  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "img" / "bench-fullstack.svg"
#: The rotating phase: rekey_interval 1 s (the configuration's minimum) and a reject_after far
#: beyond any queueing delay, so that at large N every tunnel is always due and the daemons
#: rekey as fast as they can without failing closed; at small N the rate is N per second.
ROTATE_INTERVAL, ROTATE_REJECT = 1.0, 600.0
#: charon's set-up (one /32 per selector, one CREATE_CHILD_SA each) is measured up to here.
CHARON_MAX = 1000
#: The site-router load of the issue's target: this many tunnels rotating every ROUTER_INTERVAL.
ROUTER_TUNNELS, ROUTER_INTERVAL = 10_000, 120.0
#: At ROUTER_TUNNELS the idle phase is the site-router load itself (bench/startup.py): the
#: daemons start, key for at most ROUTER_KEY_WAIT s once both are ready, then ROUTER_WINDOW s
#: are measured. Sized for make bench's 10 minutes; `python -m bench.startup --window 300`
#: runs it longer.
ROUTER_KEY_WAIT, ROUTER_WINDOW = 30.0, 20.0
#: Values one generated tunnel takes in the configuration loader's count (the loader stopped at
#: tunnels[2629] of a 10,000-tunnel file with its 50,000-value cap).
VALUES_PER_TUNNEL = 19


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def limit_reason(n: int) -> str | None:
    """Why this checkout's daemons cannot run N tunnels between two sites, or None."""
    if n > MAX_TUNNELS_PER_PEER:
        return (f"the protocol carries at most {MAX_TUNNELS_PER_PEER} tunnels per peer "
                f"(gateway.protocol.constants.MAX_TUNNELS_PER_PEER); N={n} needs more")
    if n * VALUES_PER_TUNNEL > MAX_VALUES:
        return (f"the configuration loader refuses files of more than {MAX_VALUES} values "
                f"(gateway.config.loader.MAX_VALUES); {n} tunnels need ~{n * VALUES_PER_TUNNEL}")
    return None


def run_charon(n: int, rounds: int) -> dict[str, Any]:
    ike = min(4, n)
    with charon.CharonPair(ike, n // ike) as pair:
        pair.round()  # warm-up
        rs = [pair.round() for _ in range(rounds)]
        rss = pair.rss_mb()
    rekeys = sum(r["rekeys"] for r in rs)
    secs = sum(r["seconds"] for r in rs)
    cpu = sum(r["cpu_ms_per_rekey"] * r["rekeys"] for r in rs)
    return {"child_sas": ike * (n // ike), "ike_sas": ike, "rekeys": rekeys,
            "rekeys_per_s": rekeys / secs, "cpu_ms_per_rekey": cpu / rekeys,
            "rss_mb": rss}


def _router(big: dict[str, Any], key: str, rotating: bool = False) -> float | None:
    """The busier daemon's figure from the 10,000-tunnel router window, if it ran; with
    ``rotating``, only if the window saw at least half the rotation rate (a short window that
    falls between the first keying and the next rotations measures an idle daemon)."""
    window = big.get("router", {}).get("router")
    if window is None:
        return None
    if rotating and min(window["rekeys_per_s"].values()) < 0.5 * ROUTER_TUNNELS / ROUTER_INTERVAL:
        return None
    return float(max(window[key].values()))


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rotating", default="1,16,100,1000",
                    help="tunnel counts for the rotating phase (rate, CPU, latency, RSS)")
    ap.add_argument("--idle", default="1,10000",
                    help="tunnel counts for the idle phase (idle CPU, wake-ups, RSS)")
    ap.add_argument("--pairs", type=int, default=3, help="alternating gateway/charon pairs")
    ap.add_argument("--window", type=float, default=8.0, help="seconds per measured window")
    ap.add_argument("--charon-rounds", type=int, default=5)
    ap.add_argument("--source", type=Path, default=None,
                    help="run the daemons from this checkout (its own limits apply)")
    ap.add_argument("--out", type=Path, default=RESULTS / "fullstack.json")
    ap.add_argument("--plot", type=Path, default=PLOT)
    args = ap.parse_args()
    why = charon.available()
    if why:
        print(f"bench_fullstack: {why}", file=sys.stderr)
        return 2

    def reason(n: int) -> str | None:
        return None if args.source is not None else limit_reason(n)

    rotating, idle = _sizes(args.rotating), _sizes(args.idle)
    runnable = [n for n in rotating if reason(n) is None]
    if not runnable:
        print("bench_fullstack: no tunnel count these daemons can carry", file=sys.stderr)
        return 2
    compare = max(n for n in runnable if n <= CHARON_MAX)
    src = args.source

    log("floor: crypto of one rekey, bare mutual-TLS GET")
    floor = {"crypto_ms": crypto_ms(), "mtls_get": mtls_get_ms()}

    sweep: dict[int, dict[str, Any]] = {}
    for n in sorted(set(rotating) | set(idle)):
        row: dict[str, Any] = sweep.setdefault(n, {})
        why_not = reason(n)
        if why_not:
            row["reason"] = why_not
        if n in rotating and not why_not:
            log(f"gateway N={n}: rotating")
            row["rotating"] = measure_rotating(n, args.window, ROTATE_INTERVAL, ROTATE_REJECT,
                                               source=src)
        if n in idle and not why_not and n >= ROUTER_TUNNELS:
            log(f"gateway N={n}: start, then {ROUTER_WINDOW:g} s of rotation every "
                f"{ROUTER_INTERVAL:g} s")
            row["router"] = router_run(n, src, False, ROUTER_KEY_WAIT, ROUTER_WINDOW,
                                       time_config=False)
        elif n in idle and not why_not:
            log(f"gateway N={n}: idle")
            row["idle"] = measure_idle(n, args.window, source=src)
        if n in rotating and n <= CHARON_MAX:
            log(f"charon N={n}")
            row["charon"] = run_charon(n, args.charon_rounds)
        log(json.dumps({k: _brief(v) for k, v in row.items() if isinstance(v, dict)}))

    # Alternating pairs at the comparison size; the sweep's runs are the first pair.
    ours = [sweep[compare]["rotating"]]
    theirs = [sweep[compare]["charon"]]
    for i in range(1, args.pairs):
        log(f"pair {i + 1}/{args.pairs} at N={compare}")
        ours.append(measure_rotating(compare, args.window, ROTATE_INTERVAL, ROTATE_REJECT,
                                     source=src))
        theirs.append(run_charon(compare, args.charon_rounds))
    result = summarize(floor, sweep, compare, ours, theirs)
    result["source"] = str(src) if src else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(sweep, args.plot)
    log(f"wrote {args.out} and {args.plot}")
    print(json.dumps(result["summary"], indent=1))
    return 0


def _brief(v: dict[str, Any]) -> dict[str, Any]:
    keys = ("rekeys_per_s", "cpu_ms_per_rekey", "rekey_ms_p99", "rss_mb", "cpu_share",
            "wakeups_per_s")
    return {k: v[k] for k in keys if k in v}


def summarize(floor: dict[str, Any], sweep: dict[int, dict[str, Any]], compare: int,
              ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    both = list(zip(ours, theirs, strict=True))
    rate_ratios = [o["rekeys_per_s"] / t["rekeys_per_s"] for o, t in both]
    cpu_ratios = [o["cpu_ms_per_rekey"] / t["cpu_ms_per_rekey"] for o, t in both]
    get_ms = floor["mtls_get"]["ms"]
    floor_ms = [floor["crypto_ms"] + (o["kms_requests_per_rekey"] or 0) * get_ms for o in ours]
    floor_ratios = [o["cpu_ms_per_rekey"] / f for o, f in zip(ours, floor_ms, strict=True)]
    offered_bound = all(o["rekeys_per_s"] >= 0.8 * o["offered_per_s"] for o in ours)
    lat = sorted(o["rekey_ms_p99"] for o in ours if o["rekey_ms_p99"] is not None)
    runs = [o["qkd"] for o in ours]
    bits = [r["qkd_bits_per_rekey"] for r in runs if r.get("qkd_bits_per_rekey") is not None]
    windows = [o["qkd_window"] for o in ours]
    window_bits = [w["qkd_bits_per_rekey"] for w in windows
                   if w.get("qkd_bits_per_rekey") is not None]
    big = sweep.get(ROUTER_TUNNELS, {})
    s: dict[str, Any] = {
        "compare_tunnels": compare,
        "rekeys_per_s": statistics.median(o["rekeys_per_s"] for o in ours),
        "rekeys_per_s_strongswan": statistics.median(t["rekeys_per_s"] for t in theirs),
        "rekeys_per_s_vs_strongswan": statistics.median(rate_ratios),
        "cpu_ms_per_rekey": statistics.median(o["cpu_ms_per_rekey"] for o in ours),
        "cpu_ms_per_rekey_strongswan": statistics.median(t["cpu_ms_per_rekey"] for t in theirs),
        "cpu_ms_per_rekey_floor": statistics.median(floor_ms),
        "cpu_per_rekey_vs_floor": statistics.median(floor_ratios),
        "cpu_per_rekey_vs_strongswan": statistics.median(cpu_ratios),
        "p99_rekey_ms": lat[len(lat) // 2] if lat else None,
        # Every key the KME network issued in the runs (start-up, rotation and the clean stop),
        # followed by key ID: used by a rekey, discarded with a reason, or left in a pool at the
        # stop. Wasted: discarded while running (not cut by the clean stop) or unaccounted.
        # Bits per rekey: the bits drawn for rekeys over the rekeys completed (median of runs).
        "qkd_bits_per_rekey": statistics.median(bits) if bits else None,
        "qkd_keys_wasted": sum(r["keys_wasted"] for r in runs),
        "qkd_keys_discarded_at_stop": sum(r["keys_discarded_at_stop"] for r in runs),
        "qkd_rekeys_accounted": sum(r["rekeys_total"] for r in runs),
        # The measured windows alone (pool counters against rekeys completed in the window;
        # exchanges in flight at an edge move it by up to the number in flight): informative.
        "qkd_bits_per_rekey_window": statistics.median(window_bits) if window_bits else None,
        "rss_mb_10k_tunnels": _router(big, "rss_mb"),
        # Measured: on-CPU share of one core of the busier daemon while 10,000 tunnels rotate
        # every 120 s (those keyed so far: `router_keyed` of 10,000).
        "cpu_share_10k_tunnels_at_120s": _router(big, "cpu_share", rotating=True),
        "wakeups_per_s_10k_tunnels": _router(big, "wakeups_per_s", rotating=True),
        # The same window whatever it saw (between rotations it is the idle share).
        "cpu_share_10k_tunnels_window": _router(big, "cpu_share"),
        "rekeys_per_s_10k_tunnels_window": _router(big, "rekeys_per_s"),
        "router_keyed": (min(big["router"].get("keyed_after_timeout", {"all": ROUTER_TUNNELS})
                             .values()) if "router" in big else None),
        "router_ready_s": big.get("router", {}).get("ready_s"),
        "ratios_per_pair": {"rekeys_per_s": rate_ratios, "cpu_per_rekey": cpu_ratios,
                            "vs_floor": floor_ratios},
    }
    if offered_bound:
        s["rekeys_per_s_vs_strongswan_reason"] = (
            f"at N={compare} the gateway completed what the 1 s minimum rekey_interval offers "
            f"(~{compare / 0.95:.0f}/s): its rate is bounded by the tunnel count, not by its "
            f"capacity; the ratio is a lower bound until more tunnels per peer are allowed")
    if s["qkd_bits_per_rekey"] is None:
        s["qkd_bits_per_rekey_reason"] = "no rekey completed in the runs"
    for key in ("rss_mb_10k_tunnels", "cpu_share_10k_tunnels_at_120s"):
        if s[key] is None:
            s[f"{key}_reason"] = big.get("reason", "not measured in this run (see --sizes)")
    if s["cpu_share_10k_tunnels_at_120s"] is None and s["cpu_share_10k_tunnels_window"] is not None:
        s["cpu_share_10k_tunnels_at_120s_reason"] = (
            f"the {ROUTER_WINDOW:g} s window saw {s['rekeys_per_s_10k_tunnels_window']:g} rekeys/s "
            f"(every tunnel keyed before it, the next rotations come ~{ROUTER_INTERVAL:g} s "
            f"later): run `python -m bench.startup --tunnels 10000 --window 240` for the load")
    return {"summary": s, "floor": floor, "sweep": {str(k): v for k, v in sweep.items()},
            "pairs": {"ours": ours, "strongswan": theirs}}


def plot(sweep: dict[int, dict[str, Any]], path: Path) -> None:
    def pts(phase: str, key: str, pick: Any = None) -> list[tuple[float, float | None]]:
        out = []
        for n, row in sorted(sweep.items()):
            v = row.get(phase, {}).get(key)
            out.append((float(n), pick(v) if (pick and v is not None) else v))
        return out

    def rss() -> list[tuple[float, float | None]]:
        """The larger daemon's RSS: idle run if there was one, else the rotating run."""
        out: list[tuple[float, float | None]] = []
        for n, row in sorted(sweep.items()):
            phase = row.get("idle") or row.get("router", {}).get("router") \
                or row.get("rotating") or {}
            mb = [v for k, v in phase.get("rss_mb", {}).items() if k != "kms"]
            out.append((float(n), max(mb) if mb else None))
        return out

    panels = [
        Panel("completed rekeys/s", "rekeys/s",
              [Series("qkd-gateway (2 daemons + KME)", pts("rotating", "rekeys_per_s")),
               Series("strongSwan charon (2 daemons)", pts("charon", "rekeys_per_s"))]),
        Panel("CPU per rekey", "ms (all processes)",
              [Series("", pts("rotating", "cpu_ms_per_rekey")),
               Series("", pts("charon", "cpu_ms_per_rekey"))]),
        Panel("RSS per daemon", "MB",
              [Series("", rss()), Series("", pts("charon", "rss_mb", max))]),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(panels, "bench/bench_fullstack.py; rotating every 1 s "
                           "(gateway) / back-to-back rekeys (charon)"))


if __name__ == "__main__":
    sys.exit(main())
