"""The daemon's slow periodic work: reconciliation of the data plane and the handshake sweep.

Functions of the running :class:`gateway.daemon.app.Daemon` (as gateway.daemon.status is), kept
out of app.py so that the daemon's wiring stays readable.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.daemon.keeper import UNREAD, TunnelKeeper
from gateway.keymaterial import Secret

if TYPE_CHECKING:
    from gateway.daemon.app import Daemon
    from gateway.daemon.tunnels import Keeper

__all__ = ["observe_handshake", "observe_handshakes", "reconcile_loop"]


async def reconcile_loop(d: Daemon) -> None:
    """Task ``reconcile``: every ``daemon.reconcile_interval``, restore what changed behind the
    daemon's back (interfaces and peers, then each keeper's key), sweep the handshakes and
    publish the tunnels' status where it changed."""
    while True:
        # Read at every pass: a reload that changes daemon.reconcile_interval takes effect
        # after the current wait.
        await asyncio.sleep(d.cfg.daemon.reconcile_interval)
        for iface in list(d.tunnels.interfaces.values()):
            try:
                fixed = await iface.reconcile()
            except Exception as exc:
                d.bus.emit("reconcile_failed", level="error", interface=iface.name,
                           error=str(exc))
                continue
            if fixed:
                d.bus.emit("tunnel_drift_corrected", level="warning",
                           interface=iface.name, corrections=fixed)
        slots: dict[str, dict[str, Secret | None] | None] = {}
        for name, keeper in list(d.keepers.items()):
            try:
                # A peer re-added above has an empty PSK slot: the keeper puts back the key
                # it should hold (or fails closed), so a slot never silently reads empty.
                if await _verify(d, name, keeper, slots):
                    d.bus.emit("tunnel_key_restored", level="warning", tunnel=name)
            except Exception as exc:
                d.bus.emit("reconcile_failed", level="error", tunnel=name, error=str(exc))
        await observe_handshakes(d)
        stocks: dict[tuple[str, ...], int | None] = {}
        for name in d.keepers:
            try:
                d.refresh_status(name, stocks)  # published again only if it changed
            except Exception as exc:
                d.bus.emit("reconcile_failed", level="error", tunnel=name, error=str(exc))


async def _verify(d: Daemon, name: str, keeper: Keeper,
                  slots: dict[str, dict[str, Secret | None] | None]) -> bool:
    """One keeper's check. A WireGuard tunnel's slot comes from one read of its interface per
    pass (``slots``, by interface): read per tunnel, a hub's N slots cost N reads of N peers
    (wireguard-go writes its whole device for each; the kernel dumps it)."""
    inst = d.tunnels.installers.get(name)
    if inst is None or not isinstance(keeper, TunnelKeeper):
        return await keeper.verify()  # ESP: one SA pair, read by the keeper
    iface = inst.interface
    if iface.name not in slots:
        try:
            slots[iface.name] = await iface.psks()
        except Exception as exc:  # the keepers read their own slots, and report
            slots[iface.name] = None
            d.bus.emit("reconcile_failed", level="error", interface=iface.name, error=str(exc))
    seen = slots[iface.name]
    return await keeper.verify(inst.key_in(seen) if seen is not None else UNREAD)


async def observe_handshake(d: Daemon, name: str) -> None:
    d.tunnels.handshakes[name].observe(await d.tunnels.installers[name].last_handshake())


async def observe_handshakes(d: Daemon) -> None:
    """Every tunnel's last handshake from one peer dump per interface (asked per tunnel, a
    hub's dump of N peers was read N times: N^2 work, minutes at 10,000 tunnels, with the
    event loop blocked meanwhile)."""
    dumps: dict[str, dict[str, float | None] | None] = {}
    for name, inst in list(d.tunnels.installers.items()):
        iface = inst.interface
        if iface.name not in dumps:
            try:
                dumps[iface.name] = await iface.handshakes()
            except Exception as exc:
                dumps[iface.name] = None
                d.bus.emit("reconcile_failed", level="error", interface=iface.name,
                           error=str(exc))
        seen = dumps[iface.name]
        if seen is not None:
            d.tunnels.handshakes[name].observe(inst.handshake_in(seen))
