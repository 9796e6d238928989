"""Admission of unauthenticated connections: who may hold a pre-authentication slot.

Pure bookkeeping (the transport asks, passing the time): per-source limits, a token bucket per
source, reserved slots for the configured peers' addresses and a global cap. A *source* is an
IPv4 address or an IPv6 /64 (one host can own a whole /64, so a /128 limit would be void).

==========================  ===============================================================
new connection from ...     admitted while
==========================  ===============================================================
a configured peer address   it holds < RESERVED_PER_PEER pending connections (reserved: the
                            global cap and the others' floods do not count), or as any other
any other source            its token bucket has a token (CONNECT_RATE/s, CONNECT_BURST),
                            it holds < MAX_PENDING_PER_SOURCE pending connections, and fewer
                            than the global cap are pending from non-reserved sources
==========================  ===============================================================

A connection leaves the books when its handshake completes (it is a session: authenticated) or
when it closes. The tracked sources are bounded (MAX_TRACKED_SOURCES).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.protocol.constants import (
    CONNECT_BURST,
    CONNECT_RATE,
    MAX_PENDING_PER_SOURCE,
    MAX_PENDING_UNAUTHENTICATED,
    MAX_TRACKED_SOURCES,
    RESERVED_PER_PEER,
)

__all__ = ["Admission", "Verdict", "source_of"]


def source_of(address: str) -> str:
    """The rate-limited unit of an address: itself (IPv4) or its /64 (IPv6)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    reserved: bool  # counted in a peer's reserved slots
    reason: str  # why refused ("" when admitted)


class Admission:
    """The books of pending (unauthenticated) connections."""

    def __init__(self, *, max_pending: int = MAX_PENDING_UNAUTHENTICATED,
                 per_source: int = MAX_PENDING_PER_SOURCE, reserved: int = RESERVED_PER_PEER,
                 rate: float = CONNECT_RATE, burst: float = CONNECT_BURST) -> None:
        self.max_pending, self.per_source, self.reserved_slots = max_pending, per_source, reserved
        self.rate, self.burst = rate, burst
        self._peers: frozenset[str] = frozenset()
        self._pending: dict[str, int] = {}  # source -> pending connections
        self._reserved_used: dict[str, int] = {}
        self._unreserved = 0
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)
        self._summary: dict[str, int] = {}  # refusals and closes since the last summary
        self._summary_at = 0.0

    def set_peer_sources(self, addresses: Iterable[str]) -> None:
        """The configured peers' (resolved) addresses: their sources get reserved slots."""
        self._peers = frozenset(source_of(a) for a in addresses)

    def note(self, what: str, now: float, interval: float) -> dict[str, int] | None:
        """Count a refusal or close of an unauthenticated connection; every ``interval`` at
        most, the counts since the last time are returned (to be logged as one line)."""
        self._summary[what] = self._summary.get(what, 0) + 1
        if now - self._summary_at < interval:
            return None
        counts, self._summary, self._summary_at = dict(sorted(self._summary.items())), {}, now
        return counts

    @property
    def pending(self) -> int:
        return sum(self._pending.values())

    def admit(self, source: str, now: float) -> Verdict:
        """Decide on a new connection from ``source`` (already :func:`source_of`)."""
        if source in self._peers and self._reserved_used.get(source, 0) < self.reserved_slots:
            self._reserved_used[source] = self._reserved_used.get(source, 0) + 1
            self._pending[source] = self._pending.get(source, 0) + 1
            return Verdict(True, True, "")
        if not self._take_token(source, now):
            return Verdict(False, False, "connection rate of this source exceeded")
        if self._pending.get(source, 0) - self._reserved_used.get(source, 0) >= self.per_source:
            return Verdict(False, False, "too many unauthenticated connections from this source")
        if self._unreserved >= self.max_pending:
            return Verdict(False, False, "too many unauthenticated connections")
        self._unreserved += 1
        self._pending[source] = self._pending.get(source, 0) + 1
        return Verdict(True, False, "")

    def release(self, source: str, reserved: bool) -> None:
        """The connection authenticated or closed."""
        n = self._pending.get(source, 0) - 1
        if n > 0:
            self._pending[source] = n
        else:
            self._pending.pop(source, None)
        if reserved:
            r = self._reserved_used.get(source, 0) - 1
            if r > 0:
                self._reserved_used[source] = r
            else:
                self._reserved_used.pop(source, None)
        else:
            self._unreserved -= 1

    def _take_token(self, source: str, now: float) -> bool:
        tokens, at = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > MAX_TRACKED_SOURCES:
            self._forget_idle(now)
        return ok

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled (they hold no information) or, if none has, the
        oldest half: bounded memory even under a flood from many sources."""
        full = [s for s, (tok, at) in self._buckets.items()
                if tok + (now - at) * self.rate >= self.burst]
        for s in full:
            del self._buckets[s]
        if len(self._buckets) > MAX_TRACKED_SOURCES:
            for s in sorted(self._buckets, key=lambda k: self._buckets[k][1])[
                    : len(self._buckets) // 2]:
                del self._buckets[s]
