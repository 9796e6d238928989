"""How much CPU the lab's processes use: does the demo fit a 2-core machine?

:func:`sample` lists every process inside the lab's namespaces (``ip netns pids``) and reads its
user+system CPU time from ``/proc/PID/stat``; :func:`shares` turns two samples into each kind of
process's share of all the machine's cores over the interval between them (1.0 = every core
busy). Kinds: ``daemons`` (``qkd-gateway run``), ``kms-sim``, ``wireguard-go``, ``other``; the
demo's own process (pinger, observer, view) is sampled with :func:`os.times`.

A process that exits between two samples is not counted; in a healthy run none does. (The
``ip`` of ``ip netns exec`` execs the program, so a daemon's pid is the process itself.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.demo.netns import netns_pids

__all__ = ["CpuSample", "sample", "shares"]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    wall: float  # time.monotonic() when taken
    seconds: dict[str, float]  # kind -> CPU seconds used so far by the processes of that kind
    by_pid: dict[int, tuple[int, float]]  # pid -> (start time in ticks, CPU seconds)


def _kind(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    words = [a.decode(errors="replace") for a in argv if a]
    if "gateway" in words and "run" in words:
        return "daemons"
    if "gateway" in words and "kms-sim" in words:
        return "kms-sim"
    if any(w.endswith("wireguard-go") for w in words[:1]):
        return "wireguard-go"
    return "other"


def _stat(pid: int) -> tuple[int, float] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at field 3; utime is 14,
    # stime 15, starttime 22 (proc(5)).
    rest = text.rsplit(")", 1)[-1].split()
    return int(rest[19]), (int(rest[11]) + int(rest[12])) / _TICKS


def sample(namespaces: Iterable[str], wall: float) -> CpuSample:
    """CPU seconds so far of every process in ``namespaces``, by kind, plus this process."""
    seconds: dict[str, float] = {}
    by_pid: dict[int, tuple[int, float]] = {}
    for ns in namespaces:
        for pid in netns_pids(ns):
            stat = _stat(pid)
            if stat is None or pid in by_pid:
                continue
            by_pid[pid] = stat
            kind = _kind(pid)
            seconds[kind] = seconds.get(kind, 0.0) + stat[1]
    me = os.times()
    seconds["demo"] = me.user + me.system
    return CpuSample(wall, seconds, by_pid)


def shares(before: CpuSample, after: CpuSample) -> tuple[dict[str, float], dict[str, float]]:
    """(kind -> share of all cores, kind -> CPU seconds) between two samples. A process in both
    samples (same pid and start time) counts the difference; one that started after the first
    sample counts all its CPU time."""
    used: dict[str, float] = {}
    for pid, (start, cpu) in after.by_pid.items():
        old = before.by_pid.get(pid)
        spent = cpu if old is None or old[0] != start else cpu - old[1]
        kind = _kind(pid)
        used[kind] = used.get(kind, 0.0) + max(0.0, spent)
    used["demo"] = after.seconds.get("demo", 0.0) - before.seconds.get("demo", 0.0)
    span = max(1e-9, after.wall - before.wall) * (os.cpu_count() or 1)
    return {k: v / span for k, v in sorted(used.items())}, dict(sorted(used.items()))
