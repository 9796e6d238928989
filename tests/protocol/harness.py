"""Test drivers for the protocol core: a KMS-like key store and an in-process "daemon".

KeyLink behaves like the pair of KMEs of one QKD link: ``take`` hands the master a fresh random
256-bit key under a new UUID key ID, ``fetch`` gives the slave the same bytes by ID, once; a second
fetch of an ID fails, like ETSI 014's dec_keys. Nothing is mocked: the core under test sees real
keys, real ML-KEM/X25519 and real AEAD records.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.identity import SiteIdentity
from gateway.keymaterial import Secret
from gateway.kms.types import QKDKey
from gateway.protocol import (
    Action,
    Activate,
    AllocateSpi,
    Close,
    Event,
    FetchQkdKeys,
    Installed,
    InstallKeys,
    KeysDiscarded,
    KeysFetched,
    KeysFetchFailed,
    KeysTakeFailed,
    KeysTaken,
    Node,
    Output,
    PeerConfig,
    SpiAllocated,
    TakeQkdKeys,
    Timers,
    TunnelKeys,
    TunnelPolicy,
)


@dataclass
class KeyLink:
    """The two KMEs of one link, as one object: same bytes by key ID on both sides, once."""

    name: str
    issued: dict[str, Secret] = field(default_factory=dict)
    delivered: set[str] = field(default_factory=set)
    fail_fetches: int = 0  # the next N fetches fail, as if the far KMS lost the key IDs
    empty: bool = False
    reissue: str | None = None  # a broken master KMS that hands out an old key ID again
    all_keys: list[Secret] = field(default_factory=list)

    def take(self) -> QKDKey | None:
        if self.empty:
            return None
        kid = self.reissue or str(uuid.uuid4())
        key = Secret.random(32)
        self.issued[kid] = key
        self.all_keys.append(key)
        return QKDKey(kid, key)

    def fetch(self, kid: str) -> QKDKey | None:
        if self.fail_fetches > 0:
            self.fail_fetches -= 1
            return None
        if kid in self.delivered or kid not in self.issued:
            return None
        self.delivered.add(kid)
        return QKDKey(kid, self.issued[kid])


@dataclass
class Site:
    """A Node plus the actions' effects: installed and active keys per tunnel."""

    node: Node
    links: dict[str, KeyLink]
    spis: int = 0x1000
    installed: dict[tuple[str, int], TunnelKeys] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    auto_install: bool = True
    taken: list[str] = field(default_factory=list)  # key IDs this site took (as master)
    activated: list[tuple[str, int]] = field(default_factory=list)
    hold_takes: bool = False  # a slow KMS: take results wait in ``held`` until released
    hold_tunnels: set[str] = field(default_factory=set)  # ... for these tunnels only
    held: list[Event] = field(default_factory=list)

    def perform(self, action: Action) -> Event | None:
        self.actions.append(action)
        if isinstance(action, TakeQkdKeys):
            k = self.links[action.kms].take()
            if k is None:
                return KeysTakeFailed(action.tunnel, action.epoch, action.kms, "pool empty")
            self.taken.append(k.key_id)
            ev = KeysTaken(action.tunnel, action.epoch, action.kms, (k,))
            if self.hold_takes or action.tunnel in self.hold_tunnels:
                self.held.append(ev)
                return None
            return ev
        if isinstance(action, FetchQkdKeys):
            got = [self.links[action.kms].fetch(i) for i in action.key_ids]
            if any(g is None for g in got):
                return KeysFetchFailed(action.tunnel, action.epoch, action.kms, "key not found")
            return KeysFetched(action.tunnel, action.epoch, action.kms,
                               tuple(g for g in got if g is not None))
        if isinstance(action, AllocateSpi):
            self.spis += 1
            return SpiAllocated(action.tunnel, action.epoch, self.spis)
        if isinstance(action, InstallKeys):
            self.installed[(action.tunnel, action.epoch)] = action.keys
            return Installed(action.tunnel, action.epoch) if self.auto_install else None
        if isinstance(action, Activate):
            assert action.epoch > self.active.get(action.tunnel, 0), "epochs must increase"
            self.active[action.tunnel] = action.epoch
            self.activated.append((action.tunnel, action.epoch))
        return None

    def discarded(self, *, taken: bool = True) -> dict[str, int]:
        """Keys reported discarded, per reason (``taken``: this site's own, as master)."""
        out: dict[str, int] = {}
        for a in self.actions:
            if isinstance(a, KeysDiscarded) and a.taken == taken:
                out[a.reason] = out.get(a.reason, 0) + a.count
        return out

    def held_by_core(self) -> int:
        """QKD keys this site's core still holds as master: spares and unfinished attempts."""
        n = 0
        for t in self.node.tunnels.values():
            n += len(t.spare_ids())
            p = t.pending
            if p is not None and p.initiator:
                n += sum(1 for k in p.qkd.values() if k is not None)
        return n

    def keys(self, tunnel: str) -> TunnelKeys:
        return self.installed[(tunnel, self.active[tunnel])]


FAST = Timers(handshake_timeout=2.0, hello_timeout=0.8, rekey_after=1.0, rekey_after_backup=1.5, reject_after=3.0,
              rekey_timeout=1.0, retry_base=0.05, retry_cap=0.2, keepalive_interval=0.5,
              dead_after=2.0, retire_grace=0.5)


def activated_ids(*sites: Site) -> set[str]:
    """QKD key IDs of every epoch activated at any of ``sites``."""
    return {i for s in sites for te in s.activated for i in s.installed[te].key_ids}


def check_balance(*sites: Site) -> None:
    """Every key a site took is activated (at either end), reported discarded, or still held
    by its core (the pool's keys are the daemon's): the KME stock balances exactly."""
    used = activated_ids(*sites)
    for s in sites:
        held = len(s.held)  # takes answered but not delivered yet (a slow KMS)
        got = (len([k for k in s.taken if k in used]) + sum(s.discarded().values())
               + s.held_by_core() + held)
        assert len(s.taken) == got, (f"{s.node.sae_id}: took {len(s.taken)}, activated "
                                     f"{len([k for k in s.taken if k in used])}, discarded "
                                     f"{s.discarded()}, held {s.held_by_core()} + {held}")


def make_pair(policies: list[TunnelPolicy], *, links: dict[str, KeyLink] | None = None,
              timers: Timers = FAST, b_policies: list[TunnelPolicy] | None = None,
              ids: tuple[SiteIdentity, SiteIdentity] | None = None) -> tuple[Site, Site]:
    ia, ib = ids or (SiteIdentity.generate(), SiteIdentity.generate())
    links = links if links is not None else {k: KeyLink(k) for p in policies for k in p.kms}
    a = Node(ia, "sae-a", {"b": PeerConfig("sae-b", ib.public(), tuple(policies))}, timers=timers)
    b = Node(ib, "sae-b", {"a": PeerConfig("sae-a", ia.public(),
                                            tuple(b_policies if b_policies is not None
                                                  else policies))}, timers=timers)
    return Site(a, links), Site(b, links)


class Wire:
    """Connects two Sites' nodes directly (conn 1 on both), delivering everything in order."""

    def __init__(self, a: Site, b: Site, tamper: Callable[[str, bytes], bytes] | None = None):
        self.a, self.b, self.tamper = a, b, tamper
        self.queue: list[tuple[Site, bytes]] = []
        self.closed: list[str] = []

    def _absorb(self, site: Site, out: Output, now: float) -> None:
        other = self.b if site is self.a else self.a
        for s in out.sends:
            data = self.tamper("a" if site is self.a else "b", s.data) if self.tamper else s.data
            self.queue.append((other, data))
        for act in out.actions:
            ev = site.perform(act)
            if ev is not None:
                self._absorb(site, site.node.handle(ev, now), now)
            if isinstance(act, Close):
                self.closed.append(f"{'a' if site is self.a else 'b'}:{act.reason}")

    def open(self, now: float = 0.0) -> None:
        self._absorb(self.b, self.b.node.accept(1, now), now)
        self._absorb(self.a, self.a.node.connect(1, "b", now), now)
        self.run(now)

    def run(self, now: float) -> None:
        while self.queue:
            site, data = self.queue.pop(0)
            self._absorb(site, site.node.receive(1, data, now), now)

    def feed(self, site: Site, out: Output, now: float) -> None:
        """Perform what ``out`` (of a direct call into ``site``'s node) asks, deliver it."""
        self._absorb(site, out, now)
        self.run(now)

    def release(self, site: Site, now: float) -> None:
        """A slow KMS answers: deliver ``site``'s held take results."""
        held, site.held = site.held, []
        for ev in held:
            self._absorb(site, site.node.handle(ev, now), now)
        self.run(now)

    def tick(self, now: float) -> None:
        self._absorb(self.a, self.a.node.tick(now), now)
        self._absorb(self.b, self.b.node.tick(now), now)
        self.run(now)
