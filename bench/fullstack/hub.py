"""Full-stack rekeys on a real WireGuard hub, against the recorded data plane, in one command.

    python -m bench.fullstack.hub [--tunnels 100] [--window 10] [--pairs 1]
                                  [--backend userspace|kernel] [--out FILE]

Alternating runs (hub, record, hub, record, ...) of two real ``qkd-gateway run`` daemons with
the embedded KME network over mutual TLS and N ``qkd+pqc`` tunnels rotating every
``--interval`` (1 s, the configuration's minimum: at N = 100 the daemons go as fast as they
can), measured over a window after every tunnel is keyed:

* hub: :class:`bench.fullstack.hubpair.HubPair`, ONE WireGuard interface per site in the demo
  lab's namespaces (wireguard-go on the host; ``--backend kernel`` in the kernel lab,
  ``scripts/kernel_lab.sh --exec``); a few tunnels carry pings during the window (loss counted);
  the PSKs are read back at both ends (``wg show IF preshared-keys``) and compared per tunnel;
* record: :class:`bench.fullstack.gateways.GatewayPair`, the same daemons with the
  key-recording data plane (bench/fullstack, ``make bench``).

Both are measured the same way (bench/fullstack/ours.py's window): rekeys/s (the daemons'
``tunnel_rekeyed`` events), on-CPU ms per rekey (schedstat: daemons, KME process, wireguard-go
processes; kernel WireGuard's CPU is the kernel's and not attributed), p50/p99 ``rekey_ms``,
RSS and fds per process. Ratios hub/record per pair, and their median.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.fullstack import gateways
from bench.fullstack.gateways import SITES, GatewayPair
from bench.fullstack.hubpair import Backend, HubPair, ready_timeout
from bench.fullstack.ours import REKEYED, SETTLE_S, Window, _window, pct

__all__ = ["keyed_timeout", "main", "measure", "run_hub", "run_record"]

#: The rotating phase of bench_fullstack.py: 1 s is the configuration's minimum interval, and
#: a reject_after far beyond any queueing delay keeps an overloaded pair rekeying rather than
#: failing closed (here: rates are what the daemons sustain).
INTERVAL_S, REJECT_AFTER_S = 1.0, 600.0
#: Pings through each real tunnel during the window: one every PING_INTERVAL_S, each waiting
#: up to PING_WAIT_S for its reply.
PING_INTERVAL_S, PING_WAIT_S = 0.2, 1
#: Reads of both ends' PSKs after the window until every tunnel was seen equal once (each read
#: races the rotations in flight; 1 s rotations on a loaded machine need a few).
PSK_READS = 30
#: Keying every tunnel once at start-up: a loaded 2-core machine (and QEMU TCG) is slow.
KEYED_TIMEOUT_BASE_S, KEYED_TIMEOUT_PER_TUNNEL_S = 120.0, 2.0

_PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _start_pings(pair: HubPair, seconds: float) -> list[tuple[int, subprocess.Popen[str]]]:
    """One ping per real tunnel, from beta's end to alpha's hub address of that tunnel."""
    count = max(1, int(seconds / PING_INTERVAL_S))
    out = []
    for i in pair.real:
        argv = ["ip", "netns", "exec", pair.netns("beta"), "ping", "-n", "-q", "-c", str(count),
                "-i", f"{PING_INTERVAL_S:g}", "-W", str(PING_WAIT_S),
                "-w", str(int(seconds) + 2 * PING_WAIT_S + 5),
                "-I", f"10.64.0.{i}", f"10.128.0.{i}"]
        out.append((i, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)))
    return out


def _finish_pings(pings: list[tuple[int, subprocess.Popen[str]]],
                  seconds: float) -> dict[str, Any]:
    per: dict[str, dict[str, int]] = {}
    for i, proc in pings:
        try:
            text, _ = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        m = _PING_RE.search(text or "")
        sent, got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        per[f"t{i}"] = {"sent": sent, "received": got}
    sent = sum(v["sent"] for v in per.values())
    got = sum(v["received"] for v in per.values())
    return {"per_tunnel": per, "sent": sent, "received": got, "lost": sent - got}


def _psk_check(pair: HubPair) -> dict[str, Any]:
    """Both ends' PSKs per tunnel, read while the daemons rotate: a tunnel counts once one read
    of both ends found the same key set."""
    seen: set[int] = set()
    reads = 0
    while reads < PSK_READS and len(seen) < pair.n:
        reads += 1
        seen.update(i for i, ok in enumerate(pair.psk_equal()) if ok)
    keys = pair.psks()["alpha"][pair.hub_if["alpha"]]
    return {"tunnels_equal": len(seen), "tunnels": pair.n, "reads": reads,
            "never_equal": sorted(f"t{i}" for i in set(range(pair.n)) - seen)[:10],
            "distinct_keys_at_alpha_hub": len(set(keys.values()) - {"(none)"})}


def _figures(pair: GatewayPair, w: Window, events: dict[str, list[dict[str, Any]]],
             startup_s: float) -> dict[str, Any]:
    rekeys = statistics.mean(len(v) for v in events.values())
    lat = [float(e["rekey_ms"]) for v in events.values() for e in v
           if e.get("rekey_ms") is not None]
    daemons = [s.name for s in pair.sites]
    wg = [k for k in w.before if k.startswith("wg-")]

    def per_rekey(*names: str) -> float | None:
        return round(w.cpu_ms(*names) / rekeys, 3) if rekeys else None

    return {
        "tunnels": pair.n,
        "startup_s": round(startup_s, 2),
        "window_s": round(w.seconds, 2),
        "rekeys": rekeys,
        "rekeys_per_s": round(rekeys / w.seconds, 2),
        "cpu_ms": {k: round(w.cpu_ms(k), 1) for k in w.before},
        "runqueue_wait_ms": {k: round(w.runqueue_ms(k), 1) for k in w.before},
        "cpu_ms_per_rekey": per_rekey(*w.before),
        "cpu_ms_per_rekey_daemons": per_rekey(*daemons),
        "cpu_ms_per_rekey_kms": per_rekey("kms"),
        "cpu_ms_per_rekey_wireguard_go": per_rekey(*wg) if wg else None,
        "rekey_ms_p50": pct(lat, 0.5),
        "rekey_ms_p99": pct(lat, 0.99),
        "rss_mb": {k: round(w.after[k].rss_kb / 1024, 1) for k in w.after},
        "fds": {k: w.after[k].fds for k in w.after},
    }


def keyed_timeout(n: int) -> float:
    """Seconds for every tunnel's first key (QKD_HUB_KEYED_TIMEOUT overrides: a 100-peer kernel
    hub under QEMU TCG needs more than 1,100 s)."""
    override = os.environ.get("QKD_HUB_KEYED_TIMEOUT")
    if override:
        return float(override)
    return max(KEYED_TIMEOUT_BASE_S, ready_timeout()) + n * KEYED_TIMEOUT_PER_TUNNEL_S


def measure(pair: GatewayPair, seconds: float) -> dict[str, Any]:
    """Inside ``with pair``: wait until every tunnel is keyed, then one rotating window (with
    pings and the PSK read-back on a HubPair)."""
    startup_s = pair.wait_keyed(timeout=keyed_timeout(pair.n))
    time.sleep(SETTLE_S)
    for s in pair.sites:
        s.log.skip()
    hub = pair if isinstance(pair, HubPair) else None
    pings = _start_pings(hub, seconds) if hub else []
    w = _window(pair, seconds)
    pair.check_alive()
    events = {s.name: s.log.read(REKEYED) for s in pair.sites}
    out = _figures(pair, w, events, startup_s)
    if hub:
        out["data_plane"] = hub.backend
        out["ping"] = _finish_pings(pings, seconds)
        out["psk"] = _psk_check(hub)
        pair.check_alive()
    else:
        out["data_plane"] = "record"
    return out


def run_hub(n: int, seconds: float, backend: Backend = "userspace", real: int = 4,
            interval: float = INTERVAL_S, reject_after: float = REJECT_AFTER_S) -> dict[str, Any]:
    with HubPair(n, interval, reject_after, backend=backend, real=real) as pair:
        return measure(pair, seconds)


def run_record(n: int, seconds: float, interval: float = INTERVAL_S,
               reject_after: float = REJECT_AFTER_S) -> dict[str, Any]:
    # GatewayPair reads its module's bound when it starts the KME network; under QEMU TCG the
    # start takes longer than that bound (a request to make it a parameter is in the notes).
    gateways.READY_TIMEOUT = ready_timeout()
    with GatewayPair(n, interval, reject_after) as pair:
        return measure(pair, seconds)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(hub: dict[str, Any], rec: dict[str, Any]) -> dict[str, float | None]:
    def rss(r: dict[str, Any]) -> float:
        return float(statistics.mean(r["rss_mb"][s] for s in SITES))

    return {
        "rekeys_per_s": _ratio(hub["rekeys_per_s"], rec["rekeys_per_s"]),
        "cpu_ms_per_rekey": _ratio(hub["cpu_ms_per_rekey"], rec["cpu_ms_per_rekey"]),
        "cpu_ms_per_rekey_daemons": _ratio(hub["cpu_ms_per_rekey_daemons"],
                                           rec["cpu_ms_per_rekey_daemons"]),
        "rekey_ms_p50": _ratio(hub["rekey_ms_p50"], rec["rekey_ms_p50"]),
        "rekey_ms_p99": _ratio(hub["rekey_ms_p99"], rec["rekey_ms_p99"]),
        "daemon_rss_mb": _ratio(rss(hub), rss(rec)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fullstack.hub", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tunnels", type=int, default=100)
    ap.add_argument("--window", type=float, default=10.0, help="seconds measured per run")
    ap.add_argument("--pairs", type=int, default=1, help="alternating hub/record pairs")
    ap.add_argument("--backend", choices=("userspace", "kernel"), default="userspace")
    ap.add_argument("--real", type=int, default=4, help="tunnels that carry pings")
    ap.add_argument("--interval", type=float, default=INTERVAL_S, help="rekey_interval, s")
    ap.add_argument("--no-record", action="store_true", help="the hub runs only")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for p in range(args.pairs):
        log(f"pair {p + 1}: hub ({args.backend}), {args.tunnels} tunnels")
        hub = run_hub(args.tunnels, args.window, args.backend, args.real, args.interval)
        log(f"  {hub['rekeys_per_s']} rekeys/s, {hub['cpu_ms_per_rekey']} ms CPU per rekey, "
            f"PSKs equal {hub['psk']['tunnels_equal']}/{hub['tunnels']}, "
            f"pings {hub['ping']['received']}/{hub['ping']['sent']}")
        pair: dict[str, Any] = {"hub": hub}
        if not args.no_record:
            log(f"pair {p + 1}: record, {args.tunnels} tunnels")
            rec = run_record(args.tunnels, args.window, args.interval)
            log(f"  {rec['rekeys_per_s']} rekeys/s, {rec['cpu_ms_per_rekey']} ms CPU per rekey")
            pair["record"] = rec
            pair["ratio_hub_over_record"] = ratios(hub, rec)
        runs.append(pair)
    result: dict[str, Any] = {"tunnels": args.tunnels, "backend": args.backend,
                              "window_s": args.window, "rekey_interval_s": args.interval,
                              "pairs": runs}
    if not args.no_record:
        keys = runs[0]["ratio_hub_over_record"].keys()
        result["median_ratio_hub_over_record"] = {
            k: statistics.median(v) if (v := [r["ratio_hub_over_record"][k] for r in runs
                                             if r["ratio_hub_over_record"][k] is not None])
            else None for k in keys}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    ok = all(r["hub"]["psk"]["tunnels_equal"] == r["hub"]["tunnels"] for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
