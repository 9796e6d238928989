"""How fast a simulated QKD link distils key: a mean rate, and how it fluctuates around it.

A real link's secret-key rate is not a constant. Polarisation and phase drift (temperature,
wind on aerial fibre), Raman noise from classical channels sharing the fibre (WDM coexistence,
which changes with the traffic) and the detectors' gating all move the quantum bit error rate,
and with it the rate at which privacy amplification can output secret bits. The simulator offers
three profiles, each a function of the time since the link started:

* :class:`ConstantRate`: ``mean`` bits/s, always.
* :class:`RandomWalkRate`: ``mean * f(t)``; ``f`` is piecewise constant over ``step_s`` and
  moves as a mean-reverting random walk (discrete Ornstein-Uhlenbeck) clipped to
  ``[1 - spread, 1 + spread]``, from a seeded generator, so a run can be repeated exactly.
* :class:`PeriodicRate`: ``mean * (1 + depth * sin(2 pi t / period + phase))``, e.g. a daily cycle
  of traffic on the shared fibre, compressed for a demo.

Pools integrate the profile (:meth:`bits_between`) instead of sampling it, so the key a link
makes over an interval does not depend on how often somebody looks at it.

:class:`Fluctuation` is the network-wide choice; :meth:`Fluctuation.profile` gives each link its
own profile from the link's name, so adding a link does not change the others' random walks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ConstantRate",
    "Fluctuation",
    "PeriodicRate",
    "RandomWalkRate",
    "RateProfile",
    "parse_fluctuation",
]

# Mean reversion per step of the random walk: after ~10 steps a deviation has mostly decayed,
# so the rate wanders on the scale of seconds to tens of seconds, not hours.
_REVERSION = 0.1


class RateProfile(Protocol):
    """A link's key rate over time (``t`` in seconds since the link started)."""

    @property
    def mean(self) -> float: ...

    def rate_at(self, t: float) -> float:
        """Bits/s at time ``t``."""
        ...

    def bits_between(self, t0: float, t1: float) -> float:
        """Key bits made between ``t0`` and ``t1`` (0 <= t0 <= t1)."""
        ...


def _check_mean(mean: float) -> float:
    if not math.isfinite(mean) or mean < 0:
        raise ValueError(f"key_rate must be a finite number >= 0 bits/s, got {mean}")
    return float(mean)


class ConstantRate:
    def __init__(self, mean: float) -> None:
        self._mean = _check_mean(mean)

    @property
    def mean(self) -> float:
        return self._mean

    def rate_at(self, t: float) -> float:
        return self._mean

    def bits_between(self, t0: float, t1: float) -> float:
        return self._mean * max(0.0, t1 - t0)


class PeriodicRate:
    def __init__(self, mean: float, depth: float, period_s: float, phase: float = 0.0) -> None:
        self._mean = _check_mean(mean)
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"periodic depth must lie in [0, 1], got {depth}")
        if not period_s > 0:
            raise ValueError(f"periodic period must be > 0 s, got {period_s}")
        self.depth, self.period_s, self.phase = depth, period_s, phase

    @property
    def mean(self) -> float:
        return self._mean

    def rate_at(self, t: float) -> float:
        w = 2 * math.pi / self.period_s
        return self._mean * (1.0 + self.depth * math.sin(w * t + self.phase))

    def bits_between(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return 0.0
        w = 2 * math.pi / self.period_s
        # The integral of sin(w t + p) is -cos(w t + p) / w.
        wave = (math.cos(w * t0 + self.phase) - math.cos(w * t1 + self.phase)) / w
        return self._mean * ((t1 - t0) + self.depth * wave)


class RandomWalkRate:
    """Seeded, mean-reverting random walk of the rate factor. Time only moves forward: the walk
    keeps O(1) state (the current step), which suits pools that are read with a monotonic clock
    for hours. Asking about a step before the current one raises ``ValueError``."""

    def __init__(self, mean: float, spread: float, step_s: float = 1.0, seed: str | int = 0
                 ) -> None:
        self._mean = _check_mean(mean)
        if not 0.0 <= spread < 1.0:
            raise ValueError(f"random-walk spread must lie in [0, 1), got {spread}")
        if not step_s > 0:
            raise ValueError(f"random-walk step must be > 0 s, got {step_s}")
        self.spread, self.step_s = spread, step_s
        self._rng = random.Random(seed)
        self._sigma = spread / 3.0  # a single step rarely hits the clip
        self._step = 0
        self._factor = 1.0

    @property
    def mean(self) -> float:
        return self._mean

    def _advance_to(self, step: int) -> None:
        if step < self._step:
            raise ValueError(f"random walk asked for step {step} after step {self._step}: "
                             "time must not run backwards")
        lo, hi = 1.0 - self.spread, 1.0 + self.spread
        while self._step < step:
            f = self._factor + _REVERSION * (1.0 - self._factor) + self._rng.gauss(0, self._sigma)
            self._factor = min(hi, max(lo, f))
            self._step += 1

    def _factor_of(self, step: int) -> float:
        self._advance_to(step)
        return self._factor

    def rate_at(self, t: float) -> float:
        return self._mean * self._factor_of(int(max(0.0, t) // self.step_s))

    def bits_between(self, t0: float, t1: float) -> float:
        if t1 <= t0:
            return 0.0
        total = 0.0
        t = max(0.0, t0)
        # Walk by step index, not by time: (k + 1) * step_s need not floor back to k + 1.
        step = int(t // self.step_s)
        while t < t1:
            end = min(t1, (step + 1) * self.step_s)
            total += self._factor_of(step) * max(0.0, end - t)
            t, step = end, step + 1
        return self._mean * total


@dataclass(frozen=True)
class Fluctuation:
    """The network's choice of fluctuation: ``kind`` is ``none``, ``walk`` or ``sine``.

    ``walk``: ``spread`` (fraction of the mean), ``step_s``; ``sine``: ``spread`` is the depth,
    ``period_s`` the period. ``seed`` makes every link's profile reproducible.
    """

    kind: str = "none"
    spread: float = 0.0
    step_s: float = 1.0
    period_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "walk", "sine"):
            raise ValueError(f"fluctuation kind {self.kind!r}: use none, walk or sine")
        # Build one profile now so that bad numbers fail here, not at the first key request.
        self.profile(1.0, ("a", "b"))

    def profile(self, mean: float, link: tuple[str, str]) -> RateProfile:
        """The profile of the link named ``link`` (its sorted KME IDs) with mean ``mean``."""
        tag = f"{self.seed}:{link[0]}:{link[1]}"
        if self.kind == "walk":
            return RandomWalkRate(mean, self.spread, self.step_s, seed=tag)
        if self.kind == "sine":
            phase = random.Random(tag).uniform(0, 2 * math.pi)
            return PeriodicRate(mean, self.spread, self.period_s, phase)
        return ConstantRate(mean)


def parse_fluctuation(text: str, seed: int = 0) -> Fluctuation:
    """``none``, ``walk:SPREAD[:STEP_S]`` or ``sine:DEPTH:PERIOD_S`` (the CLI's syntax)."""
    kind, *args = text.split(":")
    try:
        numbers = [float(a) for a in args]
    except ValueError:
        raise ValueError(f"fluctuation {text!r}: the parameters after ':' must be numbers") \
            from None
    if kind == "none" and not numbers:
        return Fluctuation(seed=seed)
    if kind == "walk" and len(numbers) in (1, 2):
        step = numbers[1] if len(numbers) == 2 else 1.0
        return Fluctuation("walk", numbers[0], step_s=step, seed=seed)
    if kind == "sine" and len(numbers) == 2:
        return Fluctuation("sine", numbers[0], period_s=numbers[1], seed=seed)
    raise ValueError(f"fluctuation {text!r}: use none, walk:SPREAD[:STEP_S] (e.g. walk:0.3) "
                     "or sine:DEPTH:PERIOD_S (e.g. sine:0.5:60)")
