"""The key pool of one simulated QKD link.

A QKD link distils identical secret bits at both of its KMEs at a finite rate. We model the pool
as a bit reservoir shared by the two ends: it starts full (``max_key_count`` keys of
``key_size`` bits) unless told to start with ``initial_keys``, refills at the link's key rate up
to that capacity (a constant, or a :mod:`~gateway.kms.sim.rates` profile that fluctuates), and
every key drawn from it leaves it for good. Counting bits rather than whole keys lets a 512-bit
key cost exactly two default keys and lets a slow link accumulate fractions of a key between
requests.

The material itself is drawn from ``os.urandom`` at the moment it leaves the pool: both ends would
hold the same bytes, and nothing can observe them before they are drawn, so generating them
lazily is indistinguishable from storing them and keeps a large pool cheap.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

from gateway.kms.sim.errors import PoolExhausted
from gateway.kms.sim.rates import ConstantRate, RateProfile

__all__ = ["LinkPool", "link_name"]

_ROUNDING_BITS = 1e-6


def link_name(a: str, b: str) -> tuple[str, str]:
    """The canonical (sorted) name of the undirected link between KMEs ``a`` and ``b``."""
    return (a, b) if a <= b else (b, a)


class LinkPool:
    """Bit reservoir of one QKD link. Not thread-safe: the KME network runs on one event loop."""

    def __init__(
        self,
        a: str,
        b: str,
        *,
        max_key_count: int,
        key_size: int,
        key_rate: float | RateProfile,
        clock: Callable[[], float] = time.monotonic,
        initial_keys: int | None = None,
    ) -> None:
        if max_key_count < 0:
            raise ValueError(f"max_key_count must be >= 0, got {max_key_count}")
        if key_size <= 0 or key_size % 8:
            raise ValueError(f"key_size must be a positive multiple of 8 bits, got {key_size}")
        if isinstance(key_rate, int | float):
            if key_rate < 0 or not math.isfinite(key_rate):
                raise ValueError(f"key_rate must be a finite number >= 0 bits/s, got {key_rate}")
            key_rate = ConstantRate(key_rate)
        if initial_keys is not None and not 0 <= initial_keys <= max_key_count:
            raise ValueError(f"initial_keys must lie in [0, max_key_count {max_key_count}], "
                             f"got {initial_keys}")
        self.name = link_name(a, b)
        self.key_size = key_size
        self.profile = key_rate
        self.capacity_bits = max_key_count * key_size
        self._clock = clock
        start = max_key_count if initial_keys is None else initial_keys
        self._bits = float(start * key_size)
        self._stamp = self._origin = clock()
        self.drawn_bits = 0

    @property
    def key_rate(self) -> float:
        """The link's mean key rate in bits/s."""
        return self.profile.mean

    @property
    def rate_now(self) -> float:
        """The link's key rate at this moment in bits/s (differs from the mean if it fluctuates)."""
        return self.profile.rate_at(max(0.0, self._clock() - self._origin))

    def _refill(self) -> None:
        now = self._clock()
        if now <= self._stamp:
            return
        made = self.profile.bits_between(self._stamp - self._origin, now - self._origin)
        self._stamp = now
        self._bits = min(float(self.capacity_bits), self._bits + made)

    @property
    def stock_bits(self) -> int:
        """Whole bits in the pool now (after refilling for the time elapsed)."""
        self._refill()
        # Tolerate float rounding in elapsed-time sums (0.6 s can add 59.99999 bits).
        return int(self._bits + _ROUNDING_BITS)

    @property
    def stock_keys(self) -> int:
        """Keys of the default ``key_size`` the pool could deliver now."""
        return self.stock_bits // self.key_size

    def check(self, bits: int) -> None:
        """Raise :class:`PoolExhausted` unless ``bits`` could be drawn now."""
        stock = self.stock_bits
        if bits > stock:
            raise PoolExhausted(self.name, bits, stock)

    def draw(self, bits: int) -> bytes:
        """Take ``bits`` (a multiple of 8) out of the pool and return the material."""
        if bits <= 0 or bits % 8:
            raise ValueError(f"can only draw a positive multiple of 8 bits, got {bits}")
        self.check(bits)
        self._bits = max(0.0, self._bits - bits)
        self.drawn_bits += bits
        return os.urandom(bits // 8)

    def drain(self) -> None:
        """Empty the pool (tests and the CLI use it to simulate a link that lost sync)."""
        self._refill()
        self._bits = 0.0
