"""The key network behind the simulated KMEs: topology, trusted-node relay and key custody.

Pure state, no I/O: the HTTP layer (``server``, ``skip``) turns requests into calls here and
:class:`KeyNetwork`'s answers or :class:`~gateway.kms.sim.errors.KmeError` into responses.

Relay. KMEs without a direct link get keys through trusted nodes along the shortest path (fewest
hops; ties broken by KME ID so a run is reproducible). The first link's key *is* the end-to-end
key; every further hop transports it one-time-pad encrypted under a fresh key of that hop's link,
so a key of ``size`` bits consumes ``size`` bits of every link on the path, as in a real
trusted-node network. A KME that is stopped cannot relay, so outages reroute or fail with 503.

Attachments. An SAE is normally attached to one KME. It may be attached to several, one in each
of several KME networks that share no link (two operators, or two virtual networks of one): a
key for it is then delivered at its KME in the caller's network. That is how a gateway gets two
node-disjoint QKD paths: a KMS routes inside its own network and ETSI GS QKD 014 gives the SAE
no say over the route, so disjoint paths come from disjoint networks.

Custody. A key issued to the master SAE is delivered on the spot (so it is gone from the
master-side view) and parked at the slave's KME under its key_ID until the slave SAE named in
the request fetches it once.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.keymaterial import Secret
from gateway.kms.sim.errors import (
    MSG_KEYS_NOT_FOUND,
    BadRequest,
    NotFound,
    PoolExhausted,
    Unauthorized,
    Unavailable,
)
from gateway.kms.sim.pool import LinkPool, link_name
from gateway.kms.sim.rates import Fluctuation

__all__ = ["PATH_EXTENSION", "IssuedKey", "KeyNetwork", "KmeLimits", "LinkSpec"]

# Vendor extension naming the KME path of a key (ETSI 014: vendor names end their prefix in "_").
PATH_EXTENSION = "qkdgw_path"


@dataclass(frozen=True)
class KmeLimits:
    """The numbers every KME of the network advertises in its Status (sizes in bits)."""

    key_size: int = 256
    max_key_count: int = 1000
    max_key_per_request: int = 128
    min_key_size: int = 64
    max_key_size: int = 8192
    # Key multicast (additional_slave_SAE_IDs) is not supported: the standard's way to say so.
    max_sae_id_count: int = 0

    def __post_init__(self) -> None:
        for name in ("key_size", "min_key_size", "max_key_size"):
            value = getattr(self, name)
            if value <= 0 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8 bits, got {value}")
        if not self.min_key_size <= self.key_size <= self.max_key_size:
            raise ValueError(
                f"key_size {self.key_size} must lie in [min_key_size {self.min_key_size}, "
                f"max_key_size {self.max_key_size}]"
            )
        if self.max_key_per_request < 1:
            raise ValueError(f"max_key_per_request must be >= 1, got {self.max_key_per_request}")


@dataclass(frozen=True)
class LinkSpec:
    """One QKD link. ``key_rate``: its mean rate in bits/s (None: the network's ``key_rate``);
    ``initial_keys``: keys of the default size in its pool at start (None: full)."""

    a: str
    b: str
    key_rate: float | None = None
    initial_keys: int | None = None


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    key: Secret
    master_sae: str
    slave_sae: str
    path: tuple[str, ...]


@dataclass
class _KmeState:
    parked: dict[str, IssuedKey] = field(default_factory=dict)  # key_ID -> awaiting its slave
    skip_parked: dict[str, tuple[str, Secret]] = field(default_factory=dict)  # keyId -> (src, key)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


class KeyNetwork:
    """KMEs, QKD links (each with a :class:`LinkPool`), SAE attachments and parked keys."""

    def __init__(
        self,
        kmes: Iterable[str],
        links: Iterable[tuple[str, str] | LinkSpec],
        saes: Mapping[str, str | Sequence[str]],
        limits: KmeLimits,
        key_rate: float = 0.0,
        clock: Callable[[], float] | None = None,
        fluctuation: Fluctuation | None = None,
    ) -> None:
        self.limits = limits
        self.kmes = list(dict.fromkeys(kmes))
        # SAE -> the KMEs it is attached to (one per KME network it uses).
        self.saes: dict[str, tuple[str, ...]] = {
            sae: (kme,) if isinstance(kme, str) else tuple(dict.fromkeys(kme))
            for sae, kme in saes.items()
        }
        self._state = {k: _KmeState() for k in self.kmes}
        self._adj: dict[str, set[str]] = {k: set() for k in self.kmes}
        self.pools: dict[tuple[str, str], LinkPool] = {}
        fluctuation = fluctuation or Fluctuation()
        for link in links:
            spec = link if isinstance(link, LinkSpec) else LinkSpec(*link)
            a, b = spec.a, spec.b
            for end in (a, b):
                if end not in self._adj:
                    raise ValueError(f"link {a}:{b} names unknown KME {end!r}; declare it first")
            if a == b:
                raise ValueError(f"link {a}:{b} joins a KME to itself")
            if link_name(a, b) in self.pools:
                raise ValueError(f"link {a}:{b} is given twice")
            extra: dict[str, Any] = {"clock": clock} if clock else {}
            rate = key_rate if spec.key_rate is None else spec.key_rate
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(f"link {a}:{b}: key_rate must be a finite number >= 0 bits/s, "
                                 f"got {rate}")
            if spec.initial_keys is not None and not 0 <= spec.initial_keys <= \
                    limits.max_key_count:
                raise ValueError(f"link {a}:{b}: initial_keys must lie in [0, max_key_count "
                                 f"{limits.max_key_count}], got {spec.initial_keys}")
            self.pools[link_name(a, b)] = LinkPool(
                a, b, max_key_count=limits.max_key_count, key_size=limits.key_size,
                key_rate=fluctuation.profile(rate, link_name(a, b)),
                initial_keys=spec.initial_keys, **extra,
            )
            self._adj[a].add(b)
            self._adj[b].add(a)
        for sae, attached in self.saes.items():
            if not attached:
                raise ValueError(f"SAE {sae!r} is attached to no KME")
            for kme in attached:
                if kme not in self._adj:
                    raise ValueError(f"SAE {sae!r} is attached to unknown KME {kme!r}")
        self.up: set[str] = set(self.kmes)  # KMEs able to answer and relay
        self.relayed_bits = 0  # bits sent one-time-pad encrypted over trusted-node hops

    # -- topology -------------------------------------------------------------------------------
    def _hops_from(self, kme: str) -> dict[str, int]:
        """Hop count from ``kme`` to every KME of its network (links only, running or not)."""
        hops, todo = {kme: 0}, deque([kme])
        while todo:
            node = todo.popleft()
            for nxt in sorted(self._adj[node] - hops.keys()):
                hops[nxt] = hops[node] + 1
                todo.append(nxt)
        return hops

    def neighbours(self, kme: str) -> list[str]:
        """KMEs with a direct link to ``kme`` plus those reachable over trusted nodes."""
        return sorted(self._hops_from(kme).keys() - {kme})

    def attached(self, sae: str, kme: str) -> bool:
        """Whether ``sae`` is an SAE of ``kme`` (may call it)."""
        return kme in self.saes.get(sae, ())

    def route(self, src: str, dst: str) -> list[str]:
        """Shortest path of running KMEs from ``src`` to ``dst`` (breadth first, by ID)."""
        prev: dict[str, str] = {}
        seen, todo = {src}, deque([src])
        while todo:
            node = todo.popleft()
            if node == dst:
                path = [dst]
                while path[-1] != src:
                    path.append(prev[path[-1]])
                return path[::-1]
            for nxt in sorted(self._adj[node] - seen):
                if nxt in self.up:
                    seen.add(nxt)
                    prev[nxt] = node
                    todo.append(nxt)
        down = sorted(set(self.kmes) - self.up)
        raise Unavailable(
            f"no QKD path from {src} to {dst} through running KMEs",
            [{"stopped_KMEs": down}] if down else None,
        )

    def link_stock(self, a: str, b: str) -> int:
        pool = self.pools.get(link_name(a, b))
        if pool is None:
            raise KeyError(f"no QKD link between {a!r} and {b!r}")
        return pool.stock_keys

    def link_report(self) -> list[dict[str, Any]]:
        """Every link's stock (keys of the default size) and key rate now: the view a KMS
        operator's management interface gives. Counts and rates only, never key material."""
        return [{"link": list(name), "keys": pool.stock_keys,
                 "rate_bps": round(pool.rate_now, 1), "mean_rate_bps": round(pool.key_rate, 1)}
                for name, pool in sorted(self.pools.items())]

    # -- ETSI GS QKD 014 ------------------------------------------------------------------------
    def _peer_kme(self, kme: str, sae: str, role: str) -> str:
        """The KME of ``sae`` that ``kme`` delivers to: the nearest one in ``kme``'s network
        (an SAE attached to several networks has one KME in each)."""
        attached = self.saes.get(sae)
        if attached is None:
            raise BadRequest(f"unknown {role} {sae[:128]!r}: no SAE of that ID is registered")
        if kme in attached:
            raise BadRequest(
                f"{role} {sae!r} is attached to this KME ({kme}); keys are only issued "
                "between SAEs of different KMEs"
            )
        hops = self._hops_from(kme)
        reachable = sorted((hops[k], k) for k in attached if k in hops)
        # None reachable: route() reports the missing path (503), as for any broken network.
        return reachable[0][1] if reachable else attached[0]

    def status(self, kme: str, master: str, slave: str) -> dict[str, Any]:
        target = self._peer_kme(kme, slave, "slave_SAE_ID")
        path = self.route(kme, target)
        stock = min(self.pools[link_name(a, b)].stock_keys for a, b in itertools.pairwise(path))
        lim = self.limits
        return {
            "source_KME_ID": kme,
            "target_KME_ID": target,
            "master_SAE_ID": master,
            "slave_SAE_ID": slave,
            "key_size": lim.key_size,
            "stored_key_count": stock,
            "max_key_count": lim.max_key_count,
            "max_key_per_request": lim.max_key_per_request,
            "max_key_size": lim.max_key_size,
            "min_key_size": lim.min_key_size,
            "max_SAE_ID_count": lim.max_sae_id_count,
            "status_extension": {PATH_EXTENSION: path},
        }

    def issue(self, kme: str, master: str, slave: str, number: int, size: int) -> list[IssuedKey]:
        """Get key: draw ``number`` keys of ``size`` bits towards ``slave``'s KME (validated)."""
        target = self._peer_kme(kme, slave, "slave_SAE_ID")
        path = self.route(kme, target)
        hops = list(itertools.pairwise(path))
        try:
            for hop in hops:  # all or nothing: check every link before drawing from any
                self.pools[link_name(*hop)].check(number * size)
        except PoolExhausted as exc:
            raise Unavailable(
                "not enough key material on the QKD path for this request; retry later",
                [{"link": list(exc.link), "needed_bits": exc.wanted_bits,
                  "stored_bits": exc.stock_bits}],
            ) from None
        keys = [
            IssuedKey(str(uuid.uuid4()), self._transport(hops, size), master, slave, tuple(path))
            for _ in range(number)
        ]
        parked = self._state[target].parked
        for k in keys:
            parked[k.key_id] = k
        return keys

    def _transport(self, hops: Sequence[tuple[str, str]], size: int) -> Secret:
        held = self.pools[link_name(*hops[0])].draw(size)
        for a, b in hops[1:]:
            pad = self.pools[link_name(a, b)].draw(size)
            on_wire = _xor(held, pad)  # what trusted node `a` sends to `b`
            held = _xor(on_wire, pad)  # what `b` recovers with its copy of the link key
            self.relayed_bits += size
        return Secret(held)

    def collect(
        self, kme: str, caller: str, master: str, key_ids: Sequence[str]
    ) -> list[IssuedKey]:
        """Get key with key IDs: hand parked keys to their slave SAE, all or nothing."""
        parked = self._state[kme].parked
        canonical: list[str] = []
        for raw in key_ids:
            try:
                canonical.append(str(uuid.UUID(raw)))
            except (ValueError, AttributeError, TypeError):
                raise BadRequest(MSG_KEYS_NOT_FOUND, [{"key_ID": str(raw)[:64]}]) from None
        if len(set(canonical)) != len(canonical):
            raise BadRequest("key_IDs lists the same key_ID more than once")
        missing = [k for k in canonical if k not in parked or parked[k].master_sae != master]
        if missing:
            raise BadRequest(MSG_KEYS_NOT_FOUND, [{"key_ID": k} for k in missing])
        if any(parked[k].slave_sae != caller for k in canonical):
            raise Unauthorized(f"SAE {caller} is not the slave SAE of the requested keys")
        return [parked.pop(k) for k in canonical]

    # -- SKIP (draft-cisco-skip) ----------------------------------------------------------------
    def skip_issue(self, kme: str, remote: str, size: int) -> tuple[str, Secret]:
        if remote not in self._adj or remote == kme:
            raise BadRequest(f"unknown remoteSystemID {remote[:128]!r}")
        path = self.route(kme, remote)
        hops = list(itertools.pairwise(path))
        try:
            for hop in hops:
                self.pools[link_name(*hop)].check(size)
        except PoolExhausted:
            raise Unavailable("not enough key material towards this remote system") from None
        key_id, key = uuid.uuid4().hex, self._transport(hops, size)
        self._state[remote].skip_parked[key_id] = (kme, key)
        return key_id, key

    def skip_collect(self, kme: str, remote: str, key_id: str) -> Secret:
        parked = self._state[kme].skip_parked
        entry = parked.get(key_id.lower())
        if entry is None or entry[0] != remote:
            raise NotFound(f"key {key_id[:64]} from remote system {remote[:64]} not found")
        del parked[key_id.lower()]
        return entry[1]
