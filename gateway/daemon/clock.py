"""The clock that key lifetimes are measured on: CLOCK_BOOTTIME, tagged with the boot it belongs to.

A key's deadline (``reject_after`` after its activation) must not move when an operator or NTP
steps the wall clock, and must survive a restart of the daemon (the state directory records when
the installed key was activated). ``time.monotonic()`` does not survive a restart in a form we
may compare; the wall clock survives but jumps. CLOCK_BOOTTIME does both: it never jumps, keeps
counting while the machine is suspended, and is the same for every process of one boot. Across a
reboot it restarts at zero, so every reading carries the kernel's boot ID; a reading from another
boot is not comparable, and a key activated during another boot counts as expired (the data plane
was rebuilt anyway).

The wall clock is used for display only (``activated_at`` in status and logs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BootClock", "Clock", "read_boot_id"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str:
    """The kernel's random ID of this boot (a UUID); "" if /proc is not readable."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


class Clock:
    """What the keeper reads: ``now()`` (seconds, never jumps), ``boot_id``, ``wall()``."""

    boot_id: str

    def now(self) -> float:
        raise NotImplementedError

    def wall(self) -> float:
        raise NotImplementedError


@dataclass
class BootClock(Clock):
    """The real clock: CLOCK_BOOTTIME and the kernel's boot ID."""

    boot_id: str = ""

    def __post_init__(self) -> None:
        if not self.boot_id:
            self.boot_id = read_boot_id()

    def now(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def wall(self) -> float:
        return time.time()
