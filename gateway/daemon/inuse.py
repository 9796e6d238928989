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

Memory: the activations are two flat arrays (16 bytes each, not a tuple of two boxed numbers:
~110), and at each look those no later handshake can be attributed to are forgotten: the ones
before the PSK the latest handshake used, and the ones before the last PSK installed before the
look (a handshake reported later happened after the look). A tunnel keeps the activations since
its last look, not up to ``_HISTORY`` (64 as tuples were ~7 KB per tunnel, 70 MB at 10,000
tunnels, for a tunnel whose handshakes are never observed: no traffic, or the record backend).
"""

from __future__ import annotations

import bisect
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HandshakeTracker"]

#: Activations remembered to attribute handshakes (a handshake older than all of them is
#: attributed to none: it predates this process's keys).
_HISTORY = 64
#: A handshake WireGuard reports after a look happened after it; its wall-clock time may read
#: up to this much earlier than ours did (same clock, read at different moments: generous).
_LOOK_SLACK = 5.0


@dataclass(slots=True)
class HandshakeTracker:
    handshakes: int = 0
    fresh: int = 0
    _last_seen: float | None = None
    # Each activation's wall time and epoch, oldest first (wall times in installation order).
    _walls: array[float] = field(default_factory=lambda: array("d"))
    _epochs: array[int] = field(default_factory=lambda: array("q"))
    # Epochs among _epochs an observed handshake used (a few at most: a flat array, not a set).
    _used: array[int] = field(default_factory=lambda: array("q"))
    in_use_epoch: int | None = None
    _in_use_since: float | None = None  # when the PSK in use was installed (wall)

    def activated(self, epoch: int, wall: float) -> None:
        """A new PSK (``epoch``) was installed at wall time ``wall``."""
        self._walls.append(wall)
        self._epochs.append(epoch)
        if len(self._epochs) > _HISTORY:
            self._walls.pop(0)
            self._forget(self._epochs.pop(0))

    def _forget(self, epoch: int) -> None:
        if epoch in self._used:
            self._used.remove(epoch)

    def observe(self, last_handshake: float | None, now_wall: float | None = None) -> None:
        """The peer's latest-handshake time as WireGuard reports it now (None: never), read at
        wall time ``now_wall`` (now when None)."""
        if last_handshake is not None and (self._last_seen is None
                                           or last_handshake > self._last_seen):
            self._attribute(last_handshake)
        # Every call is a look: a handshake reported later than this one happened after it,
        # so it is attributed to the last PSK installed before the look, or a later one.
        look = time.time() if now_wall is None else now_wall
        self._keep_from(bisect.bisect_right(self._walls, look - _LOOK_SLACK) - 1)

    def _attribute(self, last_handshake: float) -> None:
        self._last_seen = last_handshake
        self.handshakes += 1
        i = bisect.bisect_right(self._walls, last_handshake) - 1
        if i < 0:
            self.in_use_epoch, self._in_use_since = None, None
            return
        since, epoch = self._walls[i], self._epochs[i]
        self.in_use_epoch, self._in_use_since = epoch, since
        if epoch not in self._used:
            self._used.append(epoch)
            self.fresh += 1
        self._keep_from(i)  # no later handshake can be attributed to an earlier PSK

    def _keep_from(self, i: int) -> None:
        """Forget the activations before index ``i``."""
        if i > 0:
            for gone in self._epochs[:i]:
                self._forget(gone)
            del self._walls[:i], self._epochs[:i]

    @property
    def last_handshake(self) -> float | None:
        return self._last_seen

    def stamp(self) -> tuple[int, int, int | None]:
        """The counts and the PSK in use, which change only when a handshake is attributed."""
        return (self.handshakes, self.fresh, self.in_use_epoch)

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
