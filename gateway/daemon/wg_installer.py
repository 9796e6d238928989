"""The WireGuard side of a tunnel keeper: the PSK slot of one peer on one interface.

A hub site runs several tunnels on one interface (one WireGuard peer each). The interface is then
one :class:`WgInterface` shared by those tunnels' installers: it is created/adopted and
reconciled once, not once per tunnel, and removed once at shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses

from gateway.dataplane import InterfaceNotFound, PeerNotFound
from gateway.dataplane.types import WgInterfaceSpec, WireGuardBackend, validate_public_key
from gateway.keymaterial import Secret

__all__ = ["WgInterface", "WireGuardInstaller"]


class WgInterface:
    """One WireGuard interface as the daemon wants it (every peer of every tunnel on it)."""

    def __init__(self, backend: WireGuardBackend, spec: WgInterfaceSpec) -> None:
        self.backend, self.spec = backend, spec
        self._applied = False
        self._closed = False
        # The tunnels of a hub start concurrently (gateway.daemon.startup): one apply at a
        # time, or each would spawn its own wireguard-go for the same name ("TUN busy").
        self._apply_lock = asyncio.Lock()
        self.blocked: set[str] = set()  # peers whose tunnel took the interface down (fail closed)
        self._down: tuple[WgInterfaceSpec, WgInterfaceSpec] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    async def ensure(self) -> None:
        """Create or adopt the interface once (the first tunnel on it to start does)."""
        async with self._apply_lock:
            if not self._applied:
                await self.backend.apply(self.spec)
                self._applied = True

    async def reconcile(self) -> list[str]:
        """Restore the declared state if someone changed the interface behind our back (a
        killed wireguard-go, a peer removed by hand). While a tunnel on it holds it down to
        fail closed, it is restored down: peers come back, traffic does not."""
        async with self._apply_lock:
            return await self.backend.apply(self._down_spec() if self.blocked else self.spec)

    def _down_spec(self) -> WgInterfaceSpec:
        """The spec, down: one object per spec, so the backend's normalisation of it is
        remembered from pass to pass (gateway.dataplane.reconcile.normalize_spec)."""
        if self._down is None or self._down[0] is not self.spec:
            self._down = (self.spec, dataclasses.replace(self.spec, down=True))
        return self._down[1]

    async def handshakes(self) -> dict[str, float | None]:
        """Every peer's latest handshake (public key -> Unix time, None before the first) from
        one dump of the interface; empty if the interface is gone."""
        try:
            statuses = await self.backend.peer_status(self.name)
        except (InterfaceNotFound, PeerNotFound):
            return {}
        return {s.public_key: s.last_handshake for s in statuses}

    async def psks(self) -> dict[str, Secret | None]:
        """Every peer's PSK from one read of the interface; empty if the interface is gone."""
        try:
            return await self.backend.psks(self.name)
        except (InterfaceNotFound, PeerNotFound):
            return {}

    async def close(self, teardown: bool) -> None:
        if teardown and not self.spec.adopt and not self._closed:
            self._closed = True
            await self.backend.remove(self.spec.name)


class WireGuardInstaller:
    """Implements :class:`gateway.daemon.keeper.KeyInstaller` for one WireGuard peer.

    ``prepare`` creates or adopts the interface; ``install`` sets the peer's PSK and has the
    backend read it back; ``read_key`` is that read-back alone (for resume and verification).
    """

    def __init__(self, interface: WgInterface, peer_public_key: str) -> None:
        self.interface = interface
        self.backend = interface.backend
        self.peer_public_key = peer_public_key

    @property
    def peer_public_key(self) -> str:
        return self._peer_public_key

    @peer_public_key.setter
    def peer_public_key(self, key: str) -> None:
        # Canonical once (a reload may set another key): the reconciliation pass looks every
        # tunnel up in its interface's dumps, 2 x 10,000 base64 round trips a pass on a hub.
        self._peer_public_key, self._canonical = key, validate_public_key(key)

    @property
    def ifname(self) -> str:
        return self.interface.name

    async def prepare(self) -> None:
        await self.interface.ensure()

    async def install(self, key: Secret, *, drop_session: bool = False) -> None:
        await self.backend.set_psk(self.ifname, self.peer_public_key, key)
        if drop_session:
            await self.backend.force_handshake(self.ifname, self.peer_public_key)

    async def read_key(self) -> Secret | None:
        try:
            return await self.backend.get_psk(self.ifname, self.peer_public_key)
        except (InterfaceNotFound, PeerNotFound):
            return None

    async def last_handshake(self) -> float | None:
        """The peer's latest handshake (Unix time), None before the first or if unreachable."""
        try:
            statuses = await self.backend.peer_status(self.ifname)
        except (InterfaceNotFound, PeerNotFound):
            return None
        return next((s.last_handshake for s in statuses if s.public_key == self._canonical),
                    None)

    def key_in(self, seen: dict[str, Secret | None]) -> Secret | None:
        """This peer's PSK in one read of its interface (WgInterface.psks); None if absent."""
        return seen.get(self._canonical)

    def handshake_in(self, seen: dict[str, float | None]) -> float | None:
        """This peer's latest handshake in a dump of its interface (WgInterface.handshakes)."""
        return seen.get(self._canonical)

    async def set_blocked(self, blocked: bool) -> None:
        iface = self.interface
        if blocked:
            iface.blocked.add(self.peer_public_key)
            await self.backend.set_blocked(self.ifname, True)
        else:
            iface.blocked.discard(self.peer_public_key)
            if not iface.blocked:  # a hub stays down while any of its tunnels needs it down
                await iface.reconcile()  # up again, with its routes ...
                await self.backend.set_blocked(self.ifname, False)  # ... adopted ones too

    async def close(self, teardown: bool) -> None:
        await self.interface.close(teardown)
