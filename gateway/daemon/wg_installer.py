"""The WireGuard side of a tunnel keeper: the PSK slot of one peer on one interface."""

from __future__ import annotations

from gateway.dataplane import InterfaceNotFound, PeerNotFound
from gateway.dataplane.types import WgInterfaceSpec, WireGuardBackend, validate_public_key
from gateway.keymaterial import Secret

__all__ = ["WireGuardInstaller"]


class WireGuardInstaller:
    """Implements :class:`gateway.daemon.keeper.KeyInstaller` for one WireGuard peer.

    ``prepare`` creates or adopts the interface (and reports drift it corrected); ``install``
    sets the peer's PSK and has the backend read it back; ``reconcile`` is called periodically by
    the daemon to restore the declared state if someone changed the interface behind its back.
    """

    def __init__(self, backend: WireGuardBackend, spec: WgInterfaceSpec, peer_public_key: str):
        self.backend = backend
        self.spec = spec
        self.peer_public_key = peer_public_key

    async def prepare(self) -> None:
        await self.backend.apply(self.spec)

    async def reconcile(self) -> list[str]:
        return await self.backend.apply(self.spec)

    async def install(self, key: Secret, *, drop_session: bool = False) -> None:
        await self.backend.set_psk(self.spec.name, self.peer_public_key, key)
        if drop_session:
            await self.backend.force_handshake(self.spec.name, self.peer_public_key)

    async def read_key(self) -> Secret | None:
        try:
            return await self.backend.get_psk(self.spec.name, self.peer_public_key)
        except (InterfaceNotFound, PeerNotFound):
            return None

    async def last_handshake(self) -> float | None:
        """The peer's latest handshake (Unix time), None before the first or if unreachable."""
        try:
            statuses = await self.backend.peer_status(self.spec.name)
        except (InterfaceNotFound, PeerNotFound):
            return None
        mine = validate_public_key(self.peer_public_key)
        return next((s.last_handshake for s in statuses if s.public_key == mine), None)

    async def set_blocked(self, blocked: bool) -> None:
        await self.backend.set_blocked(self.spec.name, blocked)

    async def close(self, teardown: bool) -> None:
        if teardown and not self.spec.adopt:
            await self.backend.remove(self.spec.name)
