"""The site's tunnels as the daemon runs them: each one's data plane and keeper.

A WireGuard tunnel is its configuration, its
:class:`~gateway.daemon.wg_installer.WireGuardInstaller` (the PSK slot of one peer), the
:class:`~gateway.daemon.wg_installer.WgInterface` it sits on (shared by the tunnels of a hub)
and its :class:`~gateway.daemon.keeper.TunnelKeeper`. An XFRM tunnel is its configuration, its
:class:`~gateway.dataplane.xfrm.EspTunnel` (reqid from :func:`~gateway.daemon.build.esp_reqids`,
kept across reloads) and its :class:`~gateway.daemon.esp_keeper.EspKeeper`; the first one to
start also starts the kernel-notification task (gateway.daemon.esp_events). Every keeper's
deadline is watched by one task (gateway.daemon.deadlines), started with the first tunnel.
:class:`TunnelSet` builds them from the configuration and, on a live reload, adds, removes and
re-plans them without touching the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from gateway.config import Tunnel
from gateway.daemon.build import esp_reqids, esp_spec, wireguard_plans
from gateway.daemon.clock import BootClock
from gateway.daemon.deadlines import Deadlines
from gateway.daemon.esp_events import watch_xfrm
from gateway.daemon.esp_keeper import EspKeeper
from gateway.daemon.inuse import HandshakeTracker
from gateway.daemon.keeper import Alarm, Emit, TunnelKeeper
from gateway.daemon.state import StateStore
from gateway.daemon.wg_installer import WgInterface, WireGuardInstaller
from gateway.dataplane import WireGuardBackend, select_backend
from gateway.dataplane.xfrm import EspTunnel

__all__ = ["Keeper", "TunnelSet"]

Keeper = TunnelKeeper | EspKeeper


class Reapply(Protocol):
    async def reconcile(self) -> list[str]: ...


class TunnelSet:
    def __init__(self, store: StateStore, emit: Emit, alarm: Alarm,
                 rekey: Callable[[str, str], None] | None = None) -> None:
        self._store, self._emit, self._alarm = store, emit, alarm
        self._rekey = rekey  # asks the protocol core for a rekey now (ESP: kernel expiries)
        self.configs: dict[str, Tunnel] = {}
        self.backends: dict[str, WireGuardBackend] = {}
        self.interfaces: dict[str, WgInterface] = {}
        self.installers: dict[str, WireGuardInstaller] = {}
        self.keepers: dict[str, Keeper] = {}
        self.handshakes: dict[str, HandshakeTracker] = {}
        self.esp: dict[str, EspKeeper] = {}  # the XFRM tunnels' keepers (also in keepers)
        self.reqids: dict[str, int] = {}
        self.esp_reqids: set[int] = set()  # live: the notification task filters on it
        self.deadlines = Deadlines()  # every keeper's deadline and fail-closed retries
        self._deadline_task: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        self._esp_dirty: set[str] = set()
        self._monitor: asyncio.Task[None] | None = None
        # One clock for every keeper (each reads /proc for the boot ID once: 10,000 reads).
        self._clock = BootClock()

    def build(self, tunnels: list[Tunnel]) -> list[str]:
        """Plan every tunnel of ``tunnels`` (all of the site's: hub interfaces need them all);
        create the missing ones and point existing ones at their (possibly new) interface spec.
        Returns the names created."""
        plans = wireguard_plans(tunnels)
        wanted_ifaces = {p.spec.name: p for p in plans.values()}
        for ifname, existing in list(self.interfaces.items()):
            wanted = wanted_ifaces.get(ifname)
            if wanted is not None and existing.spec != wanted.spec:
                existing.spec = wanted.spec  # a hub gained or lost a peer: re-apply it
                self._dirty.add(ifname)
        created = self._build_esp(tunnels)
        for t in tunnels:
            if t.kind != "wireguard":
                continue
            plan = plans[t.name]
            backend = self.backends.get(plan.backend)
            if backend is None:
                backend = self.backends[plan.backend] = select_backend(
                    plan.backend)  # type: ignore[arg-type]
            iface = self.interfaces.get(plan.spec.name)
            if iface is None:
                iface = self.interfaces[plan.spec.name] = WgInterface(backend, plan.spec)
            self.configs[t.name] = t
            if t.name in self.keepers:
                self.installers[t.name].peer_public_key = plan.peer_public_key
                self.keepers[t.name].reject_after = t.reject_after
                continue
            inst = WireGuardInstaller(iface, plan.peer_public_key)
            self.installers[t.name] = inst
            self.keepers[t.name] = TunnelKeeper(t.name, t.reject_after, inst, self._store,
                                                self._emit, self._alarm, clock=self._clock)
            self.handshakes[t.name] = HandshakeTracker()
            created.append(t.name)
        return created

    def _build_esp(self, tunnels: list[Tunnel]) -> list[str]:
        """Create the XFRM tunnels that are new; hand a changed one its new spec (same reqid).
        Every spec is built (and checked) before anything changes."""
        self.reqids = esp_reqids(tunnels, self.reqids)
        specs = {t.name: esp_spec(t, self.reqids[t.name]) for t in tunnels if t.kind == "xfrm"}
        created = []
        for t in tunnels:
            if t.kind != "xfrm":
                continue
            spec = specs[t.name]
            self.configs[t.name] = t
            keeper = self.esp.get(t.name)
            if keeper is not None:
                keeper.reject_after = t.reject_after
                if isinstance(keeper.tunnel, EspTunnel) and keeper.tunnel.spec != spec:
                    keeper.respec(EspTunnel(spec))
                    self._esp_dirty.add(t.name)
                continue
            keeper = EspKeeper(t.name, t.reject_after, EspTunnel(spec), self._store,
                               self._emit, self._alarm, clock=self._clock, rekey=self._rekey)
            self.esp[t.name] = keeper
            self.keepers[t.name] = keeper
            created.append(t.name)
        self.esp_reqids.clear()
        self.esp_reqids.update(self.reqids[n] for n in self.esp)
        return created

    def take_dirty(self) -> list[Reapply]:
        """Interfaces (and XFRM tunnels) whose declared state changed since the last call (to
        re-apply now)."""
        out: list[Reapply] = [self.interfaces[n] for n in self._dirty if n in self.interfaces]
        out += [self.esp[n] for n in self._esp_dirty if n in self.esp]
        self._dirty.clear()
        self._esp_dirty.clear()
        return out

    def watch(self, tg: asyncio.TaskGroup, name: str) -> None:
        """From now on, fail ``name`` closed when its deadline passes (and retry a failed
        fail-closed): the keeper joins the one deadline task, started in ``tg`` if needed."""
        if self._deadline_task is None or self._deadline_task.done():
            self._deadline_task = tg.create_task(self.deadlines.run(), name="keeper-deadlines")
        self.keepers[name].attach(self.deadlines)
        if name in self.esp and (self._monitor is None or self._monitor.done()):
            # One task for the kernel's XFRM notifications, from the first XFRM tunnel on.
            self._monitor = tg.create_task(watch_xfrm(self.esp, self.esp_reqids, self._emit),
                                           name="xfrm-events")

    async def remove(self, name: str) -> None:
        """Take a tunnel that left the configuration down cleanly: its keeper stops; its
        interface is removed when no other tunnel uses it (an adopted one is failed closed
        instead: it is not ours to delete); a hub interface just loses the peer (at the next
        apply, by the caller); an XFRM tunnel's SAs and policies go; its state file goes."""
        keeper = self.keepers.pop(name)
        await self.deadlines.remove(keeper)  # a fail-closed in progress is cancelled
        keeper.detach()
        self.configs.pop(name)
        esp = self.esp.pop(name, None)
        if esp is not None:
            self.esp_reqids.discard(self.reqids.pop(name, 0))
            await esp.close(teardown=True)  # ours only: SAs, policies (and interface) by reqid
            self._store.remove(name)
            return
        assert isinstance(keeper, TunnelKeeper)
        inst = self.installers.pop(name)
        self.handshakes.pop(name, None)
        iface = inst.interface
        if not any(i.interface is iface for i in self.installers.values()):
            if iface.spec.adopt:
                await keeper.expire("the tunnel was removed from the configuration")
            else:
                await iface.close(True)
            self.interfaces.pop(iface.name, None)
        self._store.remove(name)

    def status(self, name: str) -> dict[str, Any]:
        return self.keepers[name].status()
