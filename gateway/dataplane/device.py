"""The part of ``apply()`` both backends share: adopt, or create + reconcile with rollback.

A backend supplies how to read the device, create it and write a plan (netlink or UAPI); this
module decides what to do with them, so the two backends cannot drift apart on the rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from gateway.dataplane.errors import InterfaceNotFound, PskNotApplied
from gateway.dataplane.links import Links
from gateway.dataplane.reconcile import DevicePlan, plan_device, require_peers
from gateway.dataplane.types import DeviceState, WgInterfaceSpec
from gateway.keymaterial import Secret

__all__ = ["adopt_or_reconcile", "confirm_psk"]

log = structlog.get_logger("gateway.dataplane")


async def adopt_or_reconcile(
    spec: WgInterfaceSpec,
    *,
    exists: bool,
    kind: str,
    netns: str | None,
    links: Links,
    adopted: set[str],
    read: Callable[[], Awaitable[DeviceState]],
    create: Callable[[], Awaitable[None]],
    write: Callable[[DevicePlan], Awaitable[None]],
) -> list[str]:
    """Adopt mode: check the interface and its peers, change nothing. Otherwise create the
    interface if missing, correct drift and return the corrections; an interface created here
    is deleted again if configuring it fails."""
    name = spec.name
    if spec.adopt:
        if not exists:
            raise InterfaceNotFound(
                f"{name}: adopt=true but the interface does not exist; bring it up first"
                " (wg-quick up / networkd) or set adopt=false to let the gateway create it"
            )
        require_peers(name, await read(), [p.public_key for p in spec.peers])
        adopted.add(name)
        return []
    created = not exists
    if created:
        await create()
    try:
        plan = plan_device(spec, None if created else await read())
        await write(plan)
        corrections = list(plan.corrections)
        corrections += await links.sync_link(spec, created=created)
    except BaseException:
        if created:  # never leave a half-configured interface we created behind
            await links.delete(name)
        raise
    if created:
        log.info("wg_interface_created", tunnel=name, backend=kind, netns=netns)
    for text in corrections:
        log.warning("wg_drift_corrected", tunnel=name, backend=kind, correction=text)
    return corrections


def confirm_psk(ifname: str, pub: str, read_back: Secret | None, written: Secret) -> None:
    """A PSK write counts only when reading it back gives the same key (both backends)."""
    if read_back != written:
        raise PskNotApplied(
            f"{ifname}: peer {pub}: the PSK read back differs from the one written;"
            " the tunnel may be using a stale key (another tool writing PSKs?)"
        )
