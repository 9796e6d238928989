"""The kernel's XFRM notifications, delivered to the XFRM tunnels' keepers.

One task (``xfrm-events``) per daemon, started with the first XFRM tunnel: an
:class:`~gateway.dataplane.xfrm.XfrmMonitor` on the daemon's network namespace, filtered to our
tunnels' reqids (a live set: reloads add and remove tunnels), so a neighbouring IKE daemon's
notifications are never looked at.

* ``SaExpired`` soft on a current SA -> the keeper asks the core for a rekey now;
  hard on a current SA -> the kernel removed it (the backstop): the tunnel fails closed;
  on a larval or superseded SA -> noted, nothing else.
* ``SaAcquire`` -> packets met a policy without an SA (dropped): expected while failed closed,
  else the keeper asks for a rekey.
* ``XfrmEventsLost`` (ENOBUFS: the kernel dropped notifications) -> every XFRM tunnel is
  verified at once (policies restored, lost SAs replaced by a rekey), as the reconcile pass does.

If the monitor socket fails, the task says so and opens a new one (1 s doubling to 30 s): the
reconcile pass and the keepers' own deadlines keep the tunnels safe meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Container, Mapping
from typing import TYPE_CHECKING

from gateway.dataplane.xfrm import SaAcquire, SaExpired, XfrmEvent, XfrmMonitor

if TYPE_CHECKING:
    from gateway.daemon.esp_keeper import EspKeeper
    from gateway.daemon.lifetime import Emit

__all__ = ["dispatch", "watch_xfrm"]

#: Reopening a failed monitor socket: 1 s doubling to 30 s (a local socket either comes back
#: at once or needs an operator; the log line says which).
_RETRY_BASE, _RETRY_CAP = 1.0, 30.0


async def dispatch(keepers: Mapping[str, EspKeeper], event: XfrmEvent, emit: Emit) -> None:
    """Hand one notification to the keeper whose tunnel it is about."""
    if isinstance(event, SaExpired | SaAcquire):
        for keeper in list(keepers.values()):
            if keeper.tunnel.owns(event):
                if isinstance(event, SaExpired):
                    await keeper.on_sa_expired(event)
                else:
                    keeper.on_acquire(event)
                return
        return
    emit("xfrm_notifications_lost", level="warning", reason=event.reason)
    for name, keeper in list(keepers.items()):
        try:
            await keeper.verify()
        except Exception as exc:
            emit("reconcile_failed", level="error", tunnel=name, error=str(exc))


async def watch_xfrm(keepers: Mapping[str, EspKeeper], reqids: Container[int],
                     emit: Emit, netns: str | None = None) -> None:
    """Long-running task; never raises (but for cancellation)."""
    delay = _RETRY_BASE
    while True:
        try:
            async with XfrmMonitor(netns, reqids=reqids) as events:
                delay = _RETRY_BASE
                async for event in events:
                    try:
                        await dispatch(keepers, event, emit)
                    except Exception as exc:  # one tunnel's failure must not stop the rest
                        emit("xfrm_event_failed", level="error", notification=type(event).__name__,
                             error=str(exc))
        except Exception as exc:
            emit("xfrm_monitor_failed", level="error", error=str(exc), retry_s=delay)
            await asyncio.sleep(delay)
            delay = min(_RETRY_CAP, delay * 2)
