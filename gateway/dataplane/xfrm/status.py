"""What ``EspTunnel.status()`` reports: the tunnel's SAs with counters and limits (no keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.dataplane.xfrm.model import Lifetime, SaState, spi_hex

__all__ = ["EspTunnelStatus", "SaStatus", "sa_status"]


@dataclass(frozen=True, slots=True)
class SaStatus:
    """One SA of the tunnel. ``direction`` "in" (we receive on ``spi``) or "out".
    ``larval``: an allocated SPI not installed yet. ``add_time``: Unix time of installation."""

    spi: int
    direction: Literal["in", "out"]
    larval: bool
    bytes: int
    packets: int
    add_time: int
    lifetime: Lifetime
    replay_window: int
    esn: bool
    replay_errors: int
    integrity_failures: int

    @property
    def spi_hex(self) -> str:
        return spi_hex(self.spi)


@dataclass(frozen=True, slots=True)
class EspTunnelStatus:
    """``outbound_spi``: the SA the tunnel sends on (None: nothing is sent, e.g. failed closed).
    ``rekey_needed``: an installed SA disappeared behind the data plane's back (reconcile)."""

    name: str
    reqid: int
    mode: str
    policies: int
    inbound: tuple[SaStatus, ...]
    outbound: tuple[SaStatus, ...]
    outbound_spi: int | None
    failed_closed: bool
    rekey_needed: bool


def sa_status(sa: SaState, direction: Literal["in", "out"]) -> SaStatus:
    return SaStatus(
        spi=sa.spi, direction=direction, larval=sa.larval, bytes=sa.bytes, packets=sa.packets,
        add_time=sa.add_time, lifetime=sa.lifetime, replay_window=sa.replay_window, esn=sa.esn,
        replay_errors=sa.replay_errors, integrity_failures=sa.integrity_failures,
    )
