"""Soak: N tunnels between two real gateways rotating every R seconds for D seconds.

    .venv/bin/python bench/soak.py [--tunnels 16] [--interval 10] [--duration 600]
                                   [--out bench/results/soak.svg] [--json soak.json] [--logs DIR]

Two real `qkd-gateway run` daemons in network namespaces talk the real peer protocol over TCP
and fetch real keys from the embedded KME network (`qkd-gateway kms-sim` in its own namespace,
mutual TLS). The data plane is the benchmark backend `record` (gateway/dataplane/record.py:
PSKs written to memory, no packets; the daemons accept it only with
QKD_GATEWAY_BENCH_DATAPLANE=record), so the tunnel count is not bounded by wireguard-go.

Pass criteria, printed at the end (exit 1 if one fails):
* no failed rekey: no tunnel ever failed closed after its first key, and every tunnel rotated
  at least duration/interval - 2 times at both ends, on the same epochs with the same key IDs;
* no key reused: every QKD key ID appears in one activation only;
* flat RSS and fd count: sampled from /proc every 5 s; the last quarter's mean RSS stays within
  10 % (+4 MiB) of the second quarter's, the fd count within +2 (the first quarter is warm-up);
* 0 keys wasted while running, and every key accounted for: each key the KME handed out (its
  stock before minus after) went into exactly one activation, or was reported by the daemon that
  took it as discarded (`keys_discarded`, role master, with a reason), or was still in a prefetch
  pool at the clean SIGTERM (`daemon_stopped.keys_wasted`; the pool is sized small, n/2 keys).
  A clean stop wastes nothing in the normal case once the daemon drains at a stop
  (Endpoint.drain: it starts no exchange, tells its peer, which then starts none either, and
  lets the exchanges in flight finish, bounded). Keys a daemon still held when it stopped are
  reported with reason `shutdown`, an exchange of the peer's cut short by that stop with
  `peer_shutdown`; both count as "at the stop" only if logged after the SIGTERM. Any other
  reason, or a stop reason logged before the SIGTERM, is a key wasted while running.
  drawn - activated - discarded - left in pools must be 0.

The plot (RSS and fds of both daemons over time) is an SVG written by hand, no plotting
library needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.harness import FaultLab

SAMPLE_S = 5.0
# Events that explain a key drawn from the KME but never activated (an aborted exchange, a
# failed action, a dropped session); counted per daemon in the result.
# Discard reasons of a clean stop (see gateway.protocol.events.DISCARD_REASONS).
STOP_REASONS = ("shutdown", "peer_shutdown")
UNUSUAL = ("action_failed", "protocol_alarm", "tunnel_activate_failed", "tunnel_install_failed",
           "peer_connection_closed", "activate_without_keys", "kms_request_failed")


def tunnels_config(cfg: dict[str, Any], n: int, interval: float, reject_after: float,
                   side: str) -> None:
    """Replace the lab's one tunnel with ``n`` tunnels on the record backend."""
    base = cfg["tunnels"][0]
    out = []
    for i in range(n):
        t = json.loads(json.dumps(base))
        t["name"] = f"soak-{i}"
        t["interface"] = f"sk{i}{side}"
        t["rekey_interval"] = f"{interval:g}s"
        t["reject_after"] = f"{reject_after:g}s"
        t["on_shutdown"] = "keep"
        wg = t["wireguard"]
        wg["backend"] = "record"
        wg["listen_port"] = 20000 + i
        host = 1 if side == "h" else 2
        net = 4 * i
        wg["address"] = f"10.200.{net // 256}.{net % 256 + host}/30"
        other = 3 - host
        wg["allowed_ips"] = [f"10.200.{net // 256}.{net % 256 + other}/32"]
        ep_host = wg["endpoint"].rsplit(":", 1)[0]
        wg["endpoint"] = f"{ep_host}:{20000 + i}"
        out.append(t)
    cfg["tunnels"] = out


def proc_sample(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open fds) of a process, from /proc."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def svg_plot(samples: dict[str, list[tuple[float, float, int]]], path: Path, title: str) -> None:
    """Two panels (RSS MiB, fds) over time, one line per daemon; plain SVG."""
    w, h, pad, gap = 720, 420, 55, 40
    ph = (h - 2 * pad - gap) / 2
    colours = ["#1f77b4", "#d62728"]
    t_max = max((s[-1][0] for s in samples.values() if s), default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for panel, (idx, label) in enumerate(((1, "RSS (MiB)"), (2, "open fds"))):
        top = pad + panel * (ph + gap)
        values = [s[idx] for series in samples.values() for s in series]
        lo, hi = 0.0, max(values, default=1.0) * 1.15 or 1.0
        parts.append(f'<rect x="{pad}" y="{top}" width="{w - 2 * pad}" height="{ph}" '
                     'fill="none" stroke="#888"/>')
        parts.append(f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" '
                     f'text-anchor="middle">{label}</text>')
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            y = top + ph - ph * k / 4
            parts.append(f'<text x="{pad - 4}" y="{y + 4}" text-anchor="end">{v:.0f}</text>')
            parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y}" y2="{y}" stroke="#eee"/>')
        for c, (name, series) in enumerate(samples.items()):
            pts = " ".join(
                f"{pad + (w - 2 * pad) * s[0] / t_max:.1f},"
                f"{top + ph - ph * (s[idx] - lo) / (hi - lo):.1f}" for s in series)
            parts.append(f'<polyline fill="none" stroke="{colours[c % 2]}" stroke-width="1.5" '
                         f'points="{pts}"/>')
            if panel == 0:
                parts.append(f'<text x="{w - pad - 150}" y="{top + 16 + 14 * c}" '
                             f'fill="{colours[c % 2]}">{name}</text>')
    bottom = h - pad + 20
    for k in range(6):
        x = pad + (w - 2 * pad) * k / 5
        parts.append(f'<text x="{x}" y="{bottom - 4}" text-anchor="middle">'
                     f'{t_max * k / 5:.0f}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">seconds</text>')
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")


def keep_logs(paths: list[Path], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, into / f"{path.parent.name}-{path.name}")


def logged_at(event: dict[str, Any]) -> float:
    """A log line's timestamp (structlog ISO 8601, UTC) as Unix seconds."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def quarter_means(series: list[tuple[float, float, int]], idx: int) -> tuple[float, float]:
    q = max(1, len(series) // 4)
    second = [s[idx] for s in series[q:2 * q]] or [series[0][idx]]
    last = [s[idx] for s in series[-q:]]
    return statistics.fmean(second), statistics.fmean(last)


async def soak(n: int, interval: float, duration: float,
               logs: Path | None = None) -> dict[str, Any]:
    reject_after = interval * 3
    rotations = int(duration / interval)
    # Keys: one per rotation per tunnel (plus the daemons' pool prefetch), with margin.
    keys = n * (rotations + 10) + 1000
    # A small prefetch pool: keys left in it at shutdown are discarded (and counted).
    pool = {"target": max(4, n // 2), "batch": max(2, n // 4), "low_water": max(1, n // 8)}
    async with FaultLab(rekey_interval=interval, reject_after=reject_after,
                        max_key_count=keys, kms={"pool": pool}) as lab:
        stock_before = sum((await lab.kms_op("info"))["stock"].values())
        names = [s.name for s in lab.plan.sites]
        for site in lab.plan.sites:
            cfg = yaml.safe_load(site.config_path.read_text())
            tunnels_config(cfg, n, interval, reject_after,
                           "h" if site.name == lab.tunnel.hub else "s")
            site.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        env = {"QKD_GATEWAY_BENCH_DATAPLANE": "record"}
        from gateway.demo import gateway_argv
        for site in lab.plan.sites:
            argv = gateway_argv("run", "--config", str(site.config_path))
            lab.daemons[site.name] = await lab.procs.start(
                f"daemon {site.name}", site.netns, argv, site.log_path, env)

        def first_keys() -> bool:
            return all(len({e["tunnel"] for e in lab.events(nm, "tunnel_rekeyed")}) == n
                       for nm in names)

        started = time.monotonic()
        await lab.wait_for(first_keys, 120 + n * 0.5, f"a first key on all {n} tunnels")
        warmup_s = time.monotonic() - started
        mark = {nm: len(lab.events(nm, "tunnel_rekeyed")) for nm in names}
        closed_before = {nm: len(lab.events(nm, "tunnel_failed_closed")) for nm in names}
        samples: dict[str, list[tuple[float, float, int]]] = {nm: [] for nm in names}
        t0 = time.monotonic()
        while (now := time.monotonic() - t0) < duration:
            for nm in names:
                rss, fds = proc_sample(lab.daemons[nm].pid)
                samples[nm].append((round(now, 1), round(rss, 2), fds))
            for p in lab.daemons.values():
                if not p.running():
                    raise SystemExit(f"{p.name} exited: {p.log_tail(20)}")
            print(f"soak: {now:5.0f}/{duration:g} s  " + "  ".join(
                f"{nm}: rss {samples[nm][-1][1]:.1f} MiB fds {samples[nm][-1][2]} rekeys "
                f"{len(lab.events(nm, 'tunnel_rekeyed')) - mark[nm]}" for nm in names),
                flush=True)
            await asyncio.sleep(SAMPLE_S)
        stop_wall = time.time()
        for p in lab.daemons.values():
            os.kill(p.pid, signal.SIGTERM)
        # A loaded machine stops 1,000 tunnels slowly; without its daemon_stopped event a
        # daemon's pools and held keys are missing from the balance.
        exits = {nm: await lab.daemons[nm].wait(max(60.0, n * 0.3)) for nm in names}
        drawn = stock_before - sum((await lab.kms_op("info"))["stock"].values())
        result: dict[str, Any] = {"tunnels": n, "interval_s": interval, "duration_s": duration,
                                  "warmup_s": round(warmup_s, 1), "sites": {}}
        per_tunnel_epochs: dict[str, dict[str, dict[int, tuple[str, ...]]]] = {}
        for nm in names:
            events = lab.events(nm, "tunnel_rekeyed")
            during = events[mark[nm]:]
            counts: dict[str, int] = {}
            for e in during:
                counts[e["tunnel"]] = counts.get(e["tunnel"], 0) + 1
            ids = [k for e in events for k in e["key_ids"]]
            per_tunnel_epochs[nm] = {}
            for e in events:
                per_tunnel_epochs[nm].setdefault(e["tunnel"], {})[e["epoch"]] = \
                    tuple(e["key_ids"])
            stopped = lab.events(nm, "daemon_stopped")
            discards: dict[str, dict[str, int]] = {"master": {}, "slave": {}}
            for e in lab.events(nm, "keys_discarded"):
                side = discards[e.get("role", "master")]
                reason = e["reason"]
                if reason in STOP_REASONS and logged_at(e) < stop_wall:
                    reason = f"{reason} (before the SIGTERM)"  # not the stop: counted as waste
                side[reason] = side.get(reason, 0) + int(e["count"])
            unusual = {ev: len(lab.events(nm, ev)) for ev in UNUSUAL}
            rss2, rss4 = quarter_means(samples[nm], 1)
            fd2, fd4 = quarter_means(samples[nm], 2)
            result["sites"][nm] = {
                "rekeys": len(during),
                "min_rotations_per_tunnel": min(counts.get(f"soak-{i}", 0) for i in range(n)),
                "failed_closed": len(lab.events(nm, "tunnel_failed_closed")) - closed_before[nm],
                "key_ids_reused": len(ids) - len(set(ids)),
                "keys_wasted": stopped[-1].get("keys_wasted") if stopped else None,
                "rss_mib_q2": round(rss2, 2), "rss_mib_q4": round(rss4, 2),
                "fds_q2": round(fd2, 1), "fds_q4": round(fd4, 1),
                "rss_mib_max": max(s[1] for s in samples[nm]),
                "fds_max": max(s[2] for s in samples[nm]),
                "unusual_events": {k: v for k, v in unusual.items() if v},
                "keys_discarded": discards,
                "exit_code": exits[nm],
            }
        a, b = (per_tunnel_epochs[nm] for nm in names)
        mismatched = sum(1 for t in a for ep in set(a[t]) & set(b.get(t, {}))
                         if a[t][ep] != b[t][ep])
        result["epochs_with_different_key_ids"] = mismatched
        # Every key the KME handed out either went into an activation (one key ID, used at both
        # ends) or was still in a prefetch pool at shutdown (keys_wasted, discarded at close).
        used = len({k for nm in names for e in lab.events(nm, "tunnel_rekeyed")
                    for k in e["key_ids"]})
        left = sum(s["keys_wasted"] or 0 for s in result["sites"].values())
        by_reason: dict[str, int] = {}
        for s in result["sites"].values():
            for reason, count in s["keys_discarded"]["master"].items():
                by_reason[reason] = by_reason.get(reason, 0) + count
        discarded = sum(by_reason.values())
        at_stop = sum(by_reason.get(r, 0) for r in STOP_REASONS)
        result["kms"] = {"keys_drawn": drawn, "keys_used": used, "left_in_pools_at_stop": left,
                         "discarded_by_reason": by_reason,
                         "discarded_at_stop": at_stop,
                         "wasted_while_running": discarded - at_stop,
                         "unaccounted": drawn - used - left - discarded}
        result["samples"] = samples
        if logs is not None:  # the lab's directory goes with it: keep the daemons' logs
            keep_logs([s.log_path for s in lab.plan.sites], logs)
        return result


def verdict(r: dict[str, Any]) -> list[str]:
    problems = []
    need = int(r["duration_s"] / r["interval_s"]) - 2
    for nm, s in r["sites"].items():
        if s["exit_code"] != 0:
            problems.append(f"{nm}: did not stop cleanly on SIGTERM (exit {s['exit_code']})")
        if s["failed_closed"]:
            problems.append(f"{nm}: {s['failed_closed']} tunnel(s) failed closed")
        if s["min_rotations_per_tunnel"] < need:
            problems.append(f"{nm}: a tunnel rotated only {s['min_rotations_per_tunnel']} times "
                            f"(expected >= {need})")
        if s["key_ids_reused"]:
            problems.append(f"{nm}: {s['key_ids_reused']} QKD key IDs used twice")
        if s["rss_mib_q4"] > s["rss_mib_q2"] * 1.10 + 4:
            problems.append(f"{nm}: RSS grew {s['rss_mib_q2']} -> {s['rss_mib_q4']} MiB")
        if s["fds_q4"] > s["fds_q2"] + 2:
            problems.append(f"{nm}: fds grew {s['fds_q2']} -> {s['fds_q4']}")
    if r["kms"]["wasted_while_running"] != 0:
        problems.append(f"keys wasted while running: {r['kms']}")
    if r["kms"]["unaccounted"] != 0:
        problems.append(f"keys not accounted for (drawn - activated - discarded - left in "
                        f"pools): {r['kms']}")
    if r["epochs_with_different_key_ids"]:
        problems.append(f"{r['epochs_with_different_key_ids']} epochs with different key IDs")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tunnels", type=int, default=16)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=600.0)
    # Not under docs/: a plain `make soak` must not replace a plot the docs show for an older
    # run (the docs name each plot's command with its --out).
    p.add_argument("--out", type=Path, default=Path("bench/results/soak.svg"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--logs", type=Path, default=None, help="copy the daemons' logs here")
    args = p.parse_args()
    r = asyncio.run(soak(args.tunnels, args.interval, args.duration, args.logs))
    svg_plot(r["samples"], args.out,
             f"soak: {r['tunnels']} tunnels, rotation every {r['interval_s']:g} s, "
             f"{r['duration_s'] / 60:g} min")
    summary = {k: v for k, v in r.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    problems = verdict(r)
    print("soak: PASS" if not problems else "soak: FAIL\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
