"""When to rotate a tunnel's keys: the jittered interval and the key-stock-aware stretch.

The rule (documented for operators in docs/operations.md, "Key-stock-aware rotation"):

* Normally a tunnel rotates every ``rekey_interval``, minus up to ``JITTER_FRACTION`` of it drawn
  at random, so the tunnels of a busy gateway (and both ends of a link) do not all rekey at the
  same instant. Jitter only shortens the interval: it can never push a rotation past the point
  operators configured.
* When the KMS reports that the link's ``stored_key_count`` is below ``low_water`` keys, the
  interval is stretched in inverse proportion to the remaining stock:
  ``interval * low_water / max(stock, 1)``. A link that delivers keys slower than the gateway
  consumes them thus spends them more slowly instead of running dry and failing closed.
* The stretched interval never exceeds ``reject_after - REKEY_MARGIN``: the tunnel always gets a
  rotation attempt while its current key is still accepted, and a failed attempt still has
  ``REKEY_MARGIN`` to succeed on retry. Stretching never weakens the fail-closed deadline.
* As soon as the stock is back at or above ``low_water``, the normal interval applies again.
* A tunnel's first rotation after its first exchange in this process (a start, a restart, a
  tunnel added by a reload) is drawn from a wider window, ``FIRST_ROTATION_SPREAD`` (the second
  half of the interval): a start keys every tunnel at once, and with the normal 10 % window
  they would keep rotating in one wave per interval for hours (10,000 tunnels: 333 rekeys/s for
  30 s every 120 s, then nothing), a burst of CPU and of KMS keys that only slowly dissolves.
* Within its jitter window a rotation is moved to a point of a ``COALESCE_GRID`` (1 s) grid of
  the monotonic clock (:func:`coalesce`), so the rotations of a busy gateway come in bursts
  that share their wake-ups and KMS requests and run on warm caches. At 10,000 tunnels every
  120 s: 0.47-0.57x the CPU per rekey of evenly spread rotations, context switches per rekey
  5.7 -> 3.1 (docs/performance.md, "Sixth round"); the KME's CPU per rekey 0.35 -> 0.13 ms.
* A WireGuard rotation brought forward to just before the next natural handshake
  (:func:`align_to_handshake`) may still move one grid step earlier (:func:`brought_forward`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

__all__ = [
    "COALESCE_GRID",
    "FIRST_ROTATION_SPREAD",
    "JITTER_FRACTION",
    "REKEY_MARGIN_FRACTION",
    "WG_FRESH_MARGIN",
    "WG_REKEY_AFTER_TIME",
    "RotationPlan",
    "align_to_handshake",
    "brought_forward",
    "coalesce",
    "plan_rotation",
]

#: Up to 10 % earlier than configured. WireGuard's own timers are fixed (REKEY_AFTER_TIME 120 s);
#: Rosenpass staggers its two roles by 10 s (120/130 s) for the same reason: avoid collisions.
JITTER_FRACTION = 0.10

#: The first rotation after a tunnel's first exchange in this process comes this share of the
#: interval early at most: a start's keying wave spreads over half an interval.
FIRST_ROTATION_SPREAD = 0.5

#: One generator for every draw (a ``random.Random()`` per call seeded itself from the OS each
#: time: ~1 % of a daemon's CPU per rekey). Jitter spreads load; it is not a secret.
_RNG = random.Random()

#: Part of the window between rekey_interval and reject_after that stays reserved for retries
#: when the interval is stretched: with the defaults (120 s / 180 s) the stretch stops at 165 s,
#: leaving 15 s for a second attempt before the tunnel fails closed.
REKEY_MARGIN_FRACTION = 0.25


#: Rotations fall on this grid of the monotonic clock (seconds) when their window holds a point
#: of it. Small against any interval worth coalescing (a window is 10 % of the interval: 12 s
#: at the default 120 s), large enough that a gateway rotating 83 tunnels a second (10,000
#: every 120 s) handles them as one burst per second instead of one wake-up each.
COALESCE_GRID = 1.0


@dataclass(frozen=True, slots=True)
class RotationPlan:
    delay: float  # seconds until the next rotation attempt
    low_stock: bool  # True when the interval was stretched because of low key stock
    #: The window the rotation may be moved within (seconds from now, earliest <= delay <=
    #: latest): the jitter window, or just ``delay`` for an unjittered (backup) side.
    earliest: float
    latest: float


def plan_rotation(
    rekey_interval: float,
    reject_after: float,
    stored_key_count: int | None,
    low_water: int,
    rng: random.Random | None = None,
    jitter: bool = True,
    first: bool = False,
) -> RotationPlan:
    """The delay before the next rotation of one tunnel (see the module docstring for the rule).

    ``stored_key_count`` is the lowest stock over the tunnel's KMS links, or None when unknown
    (no status answer yet, or a PQC-only tunnel): then the normal interval applies.
    ``jitter=False`` for the backup side of a tunnel: it steps in at 13/12 of its interval, and
    a jittered (shortened) interval could make it start before the preferred side, whose
    attempt then collides with it and the backup's QKD key is wasted. ``first``: the tunnel's
    first rotation after its first exchange in this process, drawn from the wider
    ``FIRST_ROTATION_SPREAD`` window (not while the stock is low: that interval is stretched to
    save keys).
    """
    if rekey_interval <= 0 or reject_after <= rekey_interval:
        raise ValueError("need 0 < rekey_interval < reject_after")
    base = rekey_interval
    low = stored_key_count is not None and low_water > 0 and stored_key_count < low_water
    if low:
        assert stored_key_count is not None
        ceiling = reject_after - (reject_after - rekey_interval) * REKEY_MARGIN_FRACTION
        base = min(rekey_interval * low_water / max(stored_key_count, 1), ceiling)
    if not jitter:
        return RotationPlan(delay=base, low_stock=low, earliest=base, latest=base)
    rng = rng or _RNG
    spread = FIRST_ROTATION_SPREAD if first and not low else JITTER_FRACTION
    return RotationPlan(delay=base * (1.0 - spread * rng.random()), low_stock=low,
                        earliest=base * (1.0 - spread), latest=base)


def coalesce(start: float, delay: float, earliest: float, latest: float,
             grid: float = COALESCE_GRID) -> float:
    """``delay`` (seconds after ``start``, a monotonic time) moved to a point of the grid: the
    latest one in ``[start + earliest, start + delay]``, else the first one after ``start +
    delay`` up to ``start + latest``; a window holding no grid point leaves ``delay`` as it is.
    The draw stays random (the jitter picks the grid point) and never leaves the window."""
    if not earliest <= delay <= latest:
        raise ValueError("need earliest <= delay <= latest")
    point = math.floor((start + delay) / grid) * grid
    if point < start + earliest:
        point += grid
        if point > start + latest:
            return delay
    return point - start


#: WireGuard's REKEY_AFTER_TIME: a session that carries traffic re-handshakes this long after its
#: handshake, and only the handshake mixes in the PSK (see gateway.daemon.inuse).
WG_REKEY_AFTER_TIME = 120.0
#: A fresh PSK is set this long before that re-handshake is due: far more than a rekey exchange
#: takes (milliseconds, seconds with a retry), and early enough for the backup side (13/12 of
#: the interval) to step in if the preferred side fails.
WG_FRESH_MARGIN = 15.0


def align_to_handshake(delay: float, last_handshake: float | None, now: float) -> float:
    """Move a WireGuard tunnel's next rotation to just before its next natural handshake, so that
    every handshake picks up a PSK no earlier handshake used.

    ``last_handshake`` and ``now`` are wall-clock seconds (WireGuard reports handshake times that
    way). The rotation is only ever brought forward, never delayed past ``delay`` (the configured,
    jittered interval); when the next handshake is due sooner than the margin, the rotation just
    done is what it will pick up, and ``delay`` stands."""
    if last_handshake is None:
        return delay
    target = last_handshake + WG_REKEY_AFTER_TIME - WG_FRESH_MARGIN - now
    return target if 1.0 <= target < delay else delay


def brought_forward(plan: RotationPlan, aligned: float) -> RotationPlan:
    """``plan`` with the delay :func:`align_to_handshake` chose. Its window ends there; a
    jittered side may still move one grid step earlier (long before the handshake: the margin
    is ``WG_FRESH_MARGIN``), an unjittered (backup) side not at all."""
    if aligned == plan.delay:
        return plan
    jittered = plan.earliest < plan.latest
    return dataclasses.replace(
        plan, delay=aligned, latest=aligned,
        earliest=max(1.0, aligned - COALESCE_GRID) if jittered else aligned)
