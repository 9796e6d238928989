"""The site's tunnels as the daemon runs them: each one's data plane and keeper.

A tunnel is its configuration, its :class:`~gateway.daemon.wg_installer.WireGuardInstaller`
(the PSK slot of one peer), the :class:`~gateway.daemon.wg_installer.WgInterface` it sits on
(shared by the tunnels of a hub), its :class:`~gateway.daemon.keeper.TunnelKeeper` and the
keeper's watch task. :class:`TunnelSet` builds them from the configuration and, on a live
reload, adds, removes and re-plans them without touching the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gateway.config import Tunnel
from gateway.daemon.build import wireguard_plans
from gateway.daemon.clock import BootClock
from gateway.daemon.inuse import HandshakeTracker
from gateway.daemon.keeper import Alarm, Emit, TunnelKeeper
from gateway.daemon.state import StateStore
from gateway.daemon.wg_installer import WgInterface, WireGuardInstaller
from gateway.dataplane import WireGuardBackend, select_backend

__all__ = ["TunnelSet"]


class TunnelSet:
    def __init__(self, store: StateStore, emit: Emit, alarm: Alarm) -> None:
        self._store, self._emit, self._alarm = store, emit, alarm
        self.configs: dict[str, Tunnel] = {}
        self.backends: dict[str, WireGuardBackend] = {}
        self.interfaces: dict[str, WgInterface] = {}
        self.installers: dict[str, WireGuardInstaller] = {}
        self.keepers: dict[str, TunnelKeeper] = {}
        self.handshakes: dict[str, HandshakeTracker] = {}
        self.watchers: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
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
        created = []
        for t in tunnels:
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

    def take_dirty(self) -> list[WgInterface]:
        """Interfaces whose declared state changed since the last call (to re-apply now)."""
        out = [self.interfaces[n] for n in self._dirty if n in self.interfaces]
        self._dirty.clear()
        return out

    def watch(self, tg: asyncio.TaskGroup, name: str) -> None:
        self.watchers[name] = tg.create_task(self.keepers[name].watch(), name=f"keeper:{name}")

    async def remove(self, name: str) -> None:
        """Take a tunnel that left the configuration down cleanly: its keeper stops; its
        interface is removed when no other tunnel uses it (an adopted one is failed closed
        instead: it is not ours to delete); a hub interface just loses the peer (at the next
        apply, by the caller); its state file goes."""
        task = self.watchers.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        keeper = self.keepers.pop(name)
        inst = self.installers.pop(name)
        self.configs.pop(name)
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
