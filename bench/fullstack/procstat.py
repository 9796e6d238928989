"""What a process costs, read from /proc: on-CPU time, context switches, RSS, open fds.

On-CPU time is the first field of ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds the thread
ran), summed over every thread, so worker threads (asyncio's default executor, OpenSSL) count.
The second field is the time the threads were runnable but waited for a CPU (another process
had it): on a shared machine it tells a starved process from an idle one. Context switches are
summed over the threads' ``status`` files (a process's own ``status``
reports its main thread only); each switch is a wake-up or a preemption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Sample", "cpu_ns", "sample"]


def _tasks(pid: int) -> list[Path]:
    try:
        return [p for p in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:
        return []


def _schedstat(pid: int) -> tuple[int, int]:
    """(ns on CPU, ns runnable but waiting for a CPU), summed over the threads of ``pid``
    (threads that ended meanwhile are lost: the daemons keep theirs)."""
    run = wait = 0
    for task in _tasks(pid):
        try:
            fields = (task / "schedstat").read_text().split()
            run += int(fields[0])
            wait += int(fields[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return run, wait


def cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU, all threads of ``pid``."""
    return _schedstat(pid)[0]


def _status_fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in names:
            out[key] = int(value.split()[0])
    return out


@dataclass(frozen=True)
class Sample:
    """One reading of one process."""

    cpu_ns: int
    runqueue_ns: int  # runnable but waiting for a CPU: a loaded machine shows here
    ctx_switches: int
    rss_kb: int
    fds: int


def sample(pid: int) -> Sample:
    switches = 0
    for task in _tasks(pid):
        f = _status_fields(task / "status",
                           ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        switches += sum(f.values())
    rss = _status_fields(Path(f"/proc/{pid}/status"), ("VmRSS",)).get("VmRSS", 0)
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        fds = 0
    run, wait = _schedstat(pid)
    return Sample(run, wait, switches, rss, fds)
