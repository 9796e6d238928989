"""A key-recording WireGuard "backend" for benchmarks only: it keeps interfaces, peers and PSKs
in memory and moves no packet.

The full-stack benchmark (bench/) runs thousands of tunnels between two real daemons, more than
wireguard-go or a kernel can hold on a shared 2-core test machine. This backend lets those daemons
run their real protocol, KMS and keeper paths while the PSK writes land here instead. It is never
chosen by ``auto``; the daemon refuses it unless ``QKD_GATEWAY_BENCH_DATAPLANE=record`` is set in
its environment, so a configuration that names it cannot protect (or fail to protect) real
traffic by accident.
"""

from __future__ import annotations

import os

from gateway.dataplane.errors import BackendUnavailable, InterfaceNotFound, PeerNotFound
from gateway.dataplane.reconcile import normalize_spec
from gateway.dataplane.types import PeerStatus, WgInterfaceSpec, validate_public_key
from gateway.keymaterial import Secret

__all__ = ["BENCH_ENV", "RecordBackend"]

BENCH_ENV = "QKD_GATEWAY_BENCH_DATAPLANE"


class RecordBackend:
    """In-memory WireGuardBackend (see module doc)."""

    kind = "record"

    def __init__(self) -> None:
        if os.environ.get(BENCH_ENV) != "record":
            raise BackendUnavailable(
                f"backend 'record' moves no traffic and exists for benchmarks only; it is "
                f"refused unless {BENCH_ENV}=record is set; use auto, kernel or userspace")
        self._psks: dict[str, dict[str, Secret | None]] = {}
        self.writes = 0

    def _peers(self, ifname: str) -> dict[str, Secret | None]:
        peers = self._psks.get(ifname)
        if peers is None:
            raise InterfaceNotFound(f"{ifname}: no such (recorded) interface")
        return peers

    async def apply(self, spec: WgInterfaceSpec) -> list[str]:
        spec = normalize_spec(spec)
        have = self._psks.setdefault(spec.name, {})
        for p in spec.peers:
            have.setdefault(p.public_key, None)
        return []

    async def set_psk(self, ifname: str, peer_public_key: str, psk: Secret) -> None:
        peers = self._peers(ifname)
        pub = validate_public_key(peer_public_key)
        if pub not in peers:
            raise PeerNotFound(f"{ifname}: peer {pub} is not configured")
        peers[pub] = psk
        self.writes += 1

    async def get_psk(self, ifname: str, peer_public_key: str) -> Secret | None:
        pub = validate_public_key(peer_public_key)
        peers = self._peers(ifname)
        if pub not in peers:
            raise PeerNotFound(f"{ifname}: peer {pub} is not configured")
        return peers[pub]

    async def psks(self, ifname: str) -> dict[str, Secret | None]:
        return dict(self._peers(ifname))

    async def force_handshake(self, ifname: str, peer_public_key: str) -> None:
        await self.get_psk(ifname, peer_public_key)

    async def peer_status(self, ifname: str) -> list[PeerStatus]:
        return [PeerStatus(pub, None, 0, 0, None) for pub in self._peers(ifname)]

    async def set_blocked(self, ifname: str, blocked: bool) -> None:
        return None

    async def remove(self, ifname: str) -> None:
        self._psks.pop(ifname, None)
