"""Keys installed vs keys in use (WireGuard).

WireGuard mixes the PSK into its Noise handshake only; the running session keeps its keys until
its next handshake (REKEY_AFTER_TIME, 120 s, while traffic flows). So "13 PSKs installed in 60 s"
is not "13 keys protected traffic". This tracker reads the peer's latest-handshake time (the only
handshake record WireGuard exposes) whenever the daemon looks at the tunnel anyway (after each
activation, on each reconciliation pass, on each status request) and attributes each observed
handshake to the PSK that was installed when it happened. A handshake is *fresh* when its PSK
had not been used by an earlier observed handshake.

Limits, stated where the figures are shown: WireGuard reports only the latest handshake, so two
handshakes between two looks count as one (looks happen at least every reconciliation interval,
30 s, and WireGuard handshakes at most every REKEY_TIMEOUT, 5 s, usually every 120 s); times are
WireGuard's wall-clock seconds.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HandshakeTracker"]

#: Activations remembered to attribute handshakes (a handshake older than all of them is
#: attributed to none: it predates this process's keys).
_HISTORY = 64


@dataclass
class HandshakeTracker:
    handshakes: int = 0
    fresh: int = 0
    _last_seen: float | None = None
    _activations: list[tuple[float, int]] = field(default_factory=list)  # (wall time, epoch)
    _used: set[int] = field(default_factory=set)
    in_use_epoch: int | None = None
    _in_use_since: float | None = None  # when the PSK in use was installed (wall)

    def activated(self, epoch: int, wall: float) -> None:
        """A new PSK (``epoch``) was installed at wall time ``wall``."""
        self._activations.append((wall, epoch))
        if len(self._activations) > _HISTORY:
            dropped = self._activations.pop(0)
            self._used.discard(dropped[1])

    def observe(self, last_handshake: float | None) -> None:
        """The peer's latest-handshake time as WireGuard reports it now (None: never)."""
        if last_handshake is None or (self._last_seen is not None
                                      and last_handshake <= self._last_seen):
            return
        self._last_seen = last_handshake
        self.handshakes += 1
        i = bisect.bisect_right(self._activations, (last_handshake, float("inf"))) - 1
        if i < 0:
            self.in_use_epoch, self._in_use_since = None, None
            return
        since, epoch = self._activations[i]
        self.in_use_epoch, self._in_use_since = epoch, since
        if epoch not in self._used:
            self._used.add(epoch)
            self.fresh += 1

    @property
    def last_handshake(self) -> float | None:
        return self._last_seen

    def status(self, now_wall: float) -> dict[str, Any]:
        return {
            "handshakes": self.handshakes,
            "fresh_handshakes": self.fresh,
            "psk_in_use_epoch": self.in_use_epoch,
            "psk_in_use_age_s": None if self._in_use_since is None
            else round(now_wall - self._in_use_since, 1),
            "last_handshake_age_s": None if self._last_seen is None
            else round(now_wall - self._last_seen, 1),
        }
