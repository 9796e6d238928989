"""Measure the gateway pair: a rotating window (rekeys/s, CPU per rekey, latency, KMS requests,
QKD key accounting) and an idle window (CPU share, wake-ups/s, RSS, fds)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.fullstack.gateways import GatewayPair
from bench.fullstack.logs import JsonLog
from bench.fullstack.procstat import Sample, sample

__all__ = ["measure_idle", "measure_rotating", "pct"]

REKEYED = frozenset({"tunnel_rekeyed"})
KME_EVENTS = frozenset({"kme_keys_issued", "kme_keys_delivered"})
#: After every tunnel is keyed, let the initial burst settle before a window starts.
SETTLE_S = 2.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


@dataclass
class Window:
    seconds: float
    before: dict[str, Sample]
    after: dict[str, Sample]

    def cpu_ms(self, *names: str) -> float:
        return sum(self.after[n].cpu_ns - self.before[n].cpu_ns for n in names) / 1e6

    def runqueue_ms(self, name: str) -> float:
        return (self.after[name].runqueue_ns - self.before[name].runqueue_ns) / 1e6

    def switches(self, name: str) -> int:
        return self.after[name].ctx_switches - self.before[name].ctx_switches


def _window(pair: GatewayPair, seconds: float) -> Window:
    pids = pair.pids()
    before = {k: sample(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {k: sample(p) for k, p in pids.items()}
    return Window(time.monotonic() - t0, before, after)


#: Discard reasons of a clean stop (ours or the peer's): not waste of the steady state.
STOP_REASONS = frozenset({"shutdown", "peer_shutdown"})


def _qkd_accounting(pair: GatewayPair) -> dict[str, Any]:
    """Over the whole run, after both daemons stopped, every key the KME network issued: used
    by a rekey (its ID in a ``tunnel_rekeyed`` event), discarded by the master's core
    (``keys_discarded`` with a reason), or left in a prefetch pool at the stop
    (``daemon_stopped.keys_wasted``). Waste = discards for another reason than a clean stop,
    plus keys in none of those (unaccounted). QKD bits per rekey: the bits of every key drawn
    for rekeys (issued minus left in pools minus cut by the stop) over the rekeys completed
    (distinct tunnel epochs activated at either end): exactly the key size when nothing is
    wasted."""
    issued_bits = issued_keys = issue_reqs = deliver_reqs = 0
    key_bits = 256
    for rec in JsonLog(pair.kms_log.path).read(KME_EVENTS):
        if rec["event"] == "kme_keys_issued":
            issued_keys += int(rec["number"])
            key_bits = int(rec["size"])
            issued_bits += int(rec["number"]) * key_bits
            issue_reqs += 1
        else:
            deliver_reqs += 1
    used: set[str] = set()
    epochs: set[tuple[str, int]] = set()
    left_in_pools = 0
    by_reason: dict[str, int] = {}
    for s in pair.sites:
        recs = JsonLog(s.log.path).read(
            frozenset({"tunnel_rekeyed", "daemon_stopped", "keys_discarded"}))
        for rec in recs:
            if rec["event"] == "tunnel_rekeyed":
                used.update(rec.get("key_ids") or ())
                epochs.add((str(rec.get("tunnel")), int(rec.get("epoch") or 0)))
            elif rec["event"] == "keys_discarded":
                if rec.get("role", "master") == "master":
                    reason = str(rec.get("reason"))
                    by_reason[reason] = by_reason.get(reason, 0) + int(rec.get("count") or 0)
            else:
                left_in_pools += int(rec.get("keys_wasted") or 0)
    at_stop = sum(v for k, v in by_reason.items() if k in STOP_REASONS)
    while_running = sum(by_reason.values()) - at_stop
    unaccounted = issued_keys - len(used) - sum(by_reason.values()) - left_in_pools
    drawn_for_rekeys = issued_keys - left_in_pools - at_stop
    return {
        "rekeys_total": len(epochs),
        "keys_issued": issued_keys,
        "keys_used": len(used),
        "keys_left_in_pools_at_stop": left_in_pools,
        "keys_discarded_by_reason": by_reason,
        "keys_discarded_at_stop": at_stop,
        "keys_wasted": while_running + unaccounted,
        "keys_unaccounted": unaccounted,
        "qkd_bits_per_rekey": (key_bits * drawn_for_rekeys / len(epochs) if epochs else None),
        "issued_bits": issued_bits,
        "enc_keys_requests": issue_reqs,
        "dec_keys_requests": deliver_reqs,
    }


def _ts(rec: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(rec["timestamp"]).replace("Z", "+00:00")).timestamp()


def _window_accounting(pair: GatewayPair, pools0: dict[str, dict[str, float]] | None,
                       pools1: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """Steady state, between two status snapshots of each daemon: the keys its pool handed out
    (``handed_out`` counters) against the keys it issued as master that went into rekeys it
    completed between the same two snapshots (key IDs of its ``tunnel_rekeyed`` events, each
    ID's master from the KME's log). Exchanges in flight at the two edges cancel when the
    number in flight is steady; what remains is keys taken and never used: waste."""
    if pools0 is None or pools1 is None:
        return {"reason": "a daemon did not answer qkd-gateway status"}
    master: dict[str, str] = {}
    key_bits = 256
    for rec in JsonLog(pair.kms_log.path).read(frozenset({"kme_keys_issued"})):
        key_bits = int(rec["size"])
        for k in rec.get("key_ids") or ():
            master[k] = str(rec["master"])
    taken = used = rekeys = 0
    per_site: dict[str, dict[str, int]] = {}
    for s in pair.sites:
        t0, t1 = pools0[s.name]["at"], pools1[s.name]["at"]
        mine: set[str] = set()
        n = 0
        for rec in JsonLog(s.log.path).read(REKEYED):
            if t0 <= _ts(rec) <= t1:
                n += 1
                mine.update(k for k in rec.get("key_ids") or () if master.get(k) == s.sae_id)
        took = int(pools1[s.name]["handed_out"] - pools0[s.name]["handed_out"])
        per_site[s.name] = {"keys_taken": took, "keys_used_as_master": len(mine),
                            "rekeys": n}
        taken, used, rekeys = taken + took, used + len(mine), rekeys + n
    rekeys_per_site = rekeys / len(pair.sites)
    return {
        "per_site": per_site,
        "keys_taken_from_pools": taken,
        "keys_used": used,
        "keys_wasted": taken - used,
        "qkd_bits_per_rekey": key_bits * taken / rekeys_per_site if rekeys_per_site else None,
    }


def measure_rotating(n: int, seconds: float, rekey_interval: float = 1.0,
                     reject_after: float = 4.0, state_root: Path | None = None,
                     source: Path | None = None) -> dict[str, Any]:
    with GatewayPair(n, rekey_interval, reject_after, state_root=state_root,
                     source=source) as pair:
        startup_s = pair.wait_keyed(timeout=60 + n * 0.05)
        time.sleep(SETTLE_S)
        for s in pair.sites:
            s.log.skip()
        pair.kms_log.skip()
        pools0 = pair.pool_stats()
        w = _window(pair, seconds)
        pair.check_alive()
        events = {s.name: s.log.read(REKEYED) for s in pair.sites}
        kme = pair.kms_log.read(KME_EVENTS)
        pools1 = pair.pool_stats()
        time.sleep(SETTLE_S)  # events up to the second snapshot reach the logs
        qkd_window = _window_accounting(pair, pools0, pools1)
        pair.stop_daemons()
        qkd = _qkd_accounting(pair)
    counts = [len(v) for v in events.values()]
    rekeys = statistics.mean(counts)
    lat = [float(e["rekey_ms"]) for v in events.values() for e in v
           if e.get("rekey_ms") is not None]
    names = [s for s in w.before if s != "kms"]
    cpu_all = w.cpu_ms(*w.before)
    requests = len(kme)
    return {
        "tunnels": n,
        "rekey_interval_s": rekey_interval,
        "startup_s": round(startup_s, 2),
        "window_s": round(w.seconds, 2),
        "rekeys": rekeys,
        "rekeys_per_s": rekeys / w.seconds,
        "offered_per_s": n / (rekey_interval * 0.95),
        "cpu_ms": {k: round(w.cpu_ms(k), 1) for k in w.before},
        # Runnable but waiting for a CPU while other processes (on a shared machine: other
        # people's work) had it; large values mean the rate is bounded by the machine.
        "runqueue_wait_ms": {k: round(w.runqueue_ms(k), 1) for k in w.before},
        "cpu_ms_per_rekey": cpu_all / rekeys if rekeys else None,
        "cpu_ms_per_rekey_daemons": w.cpu_ms(*names) / rekeys if rekeys else None,
        "cpu_ms_per_rekey_kms": w.cpu_ms("kms") / rekeys if rekeys else None,
        "kms_requests_per_rekey": requests / rekeys if rekeys else None,
        "rekey_ms_p50": pct(lat, 0.5),
        "rekey_ms_p99": pct(lat, 0.99),
        "rss_mb": {k: round(w.after[k].rss_kb / 1024, 1) for k in w.after},
        "fds": {k: w.after[k].fds for k in w.after},
        "qkd": qkd,
        "qkd_window": qkd_window,
    }


def measure_idle(n: int, seconds: float, rekey_interval: float = 120.0,
                 reject_after: float = 180.0, source: Path | None = None) -> dict[str, Any]:
    """Every tunnel keyed once, then a window in which none is due (the next rotations come
    after 0.9 x rekey_interval): what the daemons cost between rotations."""
    with GatewayPair(n, rekey_interval, reject_after, source=source) as pair:
        startup_s = pair.wait_keyed(timeout=60 + n * 0.05)
        time.sleep(SETTLE_S)
        for s in pair.sites:
            s.log.skip()
        w = _window(pair, seconds)
        pair.check_alive()
        rekeys = sum(len(s.log.read(REKEYED)) for s in pair.sites)
    daemons = [s.name for s in pair.sites]
    return {
        "tunnels": n,
        "startup_s": round(startup_s, 2),
        "window_s": round(w.seconds, 2),
        "rekeys_in_window": rekeys,
        "cpu_share": {k: w.cpu_ms(k) / 1000 / w.seconds for k in w.before},
        "wakeups_per_s": {k: w.switches(k) / w.seconds for k in w.before},
        "rss_mb": {k: round(w.after[k].rss_kb / 1024, 1) for k in daemons},
        "fds": {k: w.after[k].fds for k in daemons},
    }

