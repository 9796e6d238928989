"""Keys installed vs keys in use: which preshared key WireGuard's handshakes actually used.

WireGuard mixes the PSK into its handshake only; a session keeps its keys until the next
handshake (REKEY_AFTER_TIME, 120 s, while traffic flows). So "12 PSKs installed in 60 s" says
little about what protected the traffic. The demo measures it independently of the daemons:

* :func:`latest_handshake` runs ``wg show IF latest-handshakes`` in the tunnel's namespace (kernel
  WireGuard and wireguard-go alike);
* :class:`HandshakeLog` keeps each distinct handshake time seen (the demo looks every 2 s; two
  handshakes between two looks would count as one, but WireGuard handshakes at most every 5 s and
  usually every 120 s) and attributes each to the PSK in force at *both* ends at that moment, from
  the daemons' ``tunnel_rekeyed`` log times: a handshake completes only if both ends hold the same
  key. A handshake is *fresh* when its PSK had not been used by an earlier one.

WireGuard reports handshake times in whole seconds, so a handshake within a second of a rotation
may be attributed to the key before; the figures are exact otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.demo.netns import wg_show

__all__ = ["HandshakeLog", "InUse", "latest_handshake"]



async def latest_handshake(netns: str, interface: str) -> float | None:
    """Unix time of the interface's latest completed handshake (its newest peer), None if none
    yet or if ``wg`` failed."""
    out = await wg_show(netns, interface, "latest-handshakes")
    if out is None:
        return None
    # Lines are "<peer public key>\t<unix seconds>"; 0 means never.
    times = [int(t) for line in out.splitlines()
             if "\t" in line and (t := line.split("\t")[1].strip()).isdigit()]
    newest = max(times, default=0)
    return float(newest) if newest > 0 else None


@dataclass(frozen=True)
class InUse:
    handshakes: int
    fresh: int
    epoch: int | None  # the epoch of the PSK the latest handshake used
    since: float | None  # when that PSK was in force at both ends (Unix seconds)


@dataclass
class HandshakeLog:
    """Distinct handshake times of one tunnel, in the order seen."""

    times: list[float] = field(default_factory=list)

    def observe(self, when: float | None) -> None:
        if when is not None and (not self.times or when > self.times[-1]):
            self.times.append(when)

    def in_use(self, both_ends: dict[int, float]) -> InUse:
        """Attribute every handshake to an epoch. ``both_ends``: epoch -> the time it was in
        force at both ends (the later of the two ends' log times)."""
        order = sorted(both_ends.items(), key=lambda item: item[1])
        used: set[int] = set()
        fresh = 0
        last: tuple[int, float] | None = None
        for when in self.times:
            # The handshake happened within [when, when + 1): WireGuard counts whole seconds.
            candidates = [(e, t) for e, t in order if t < when + 1.0]
            last = candidates[-1] if candidates else None
            if last is not None and last[0] not in used:
                used.add(last[0])
                fresh += 1
        return InUse(len(self.times), fresh, last[0] if last else None,
                     last[1] if last else None)
