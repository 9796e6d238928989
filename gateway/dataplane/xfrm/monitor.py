"""EXPIRE and ACQUIRE notifications from the kernel as an async iterator.

    async with XfrmMonitor(netns="site-a", reqids={spec.reqid}) as events:
        async for event in events:
            match event:
                case SaExpired(hard=False):  rekey the tunnel that owns event.reqid
                case SaExpired(hard=True):   the SA is gone: rekey, or fail closed
                case SaAcquire():            a packet found a policy without SA (tunnel down)
                case XfrmEventsLost():       notifications were dropped: reconcile every tunnel

The socket joins the XFRMNLGRP_EXPIRE and XFRMNLGRP_ACQUIRE multicast groups of the namespace.
``reqids`` (optional) keeps only events about our own SAs and policies; events of a neighbouring
IKE daemon are skipped. The iterator waits for the kernel as long as it takes (it is an event
stream); opening it runs under a deadline, and the caller may wrap ``anext`` in a timeout.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
from collections import deque
from collections.abc import AsyncIterator, Container
from types import TracebackType

import structlog

from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.codec import parse_acquire, parse_expire
from gateway.dataplane.xfrm.model import SaAcquire, SaExpired, XfrmEvent, XfrmEventsLost
from gateway.dataplane.xfrm.transport import XfrmSocket, parse_datagram

__all__ = ["XfrmMonitor"]

log = structlog.get_logger("gateway.dataplane.xfrm")


class XfrmMonitor:
    """Kernel XFRM notifications of one network namespace."""

    def __init__(self, netns: str | None = None, *, reqids: Container[int] | None = None) -> None:
        self.netns = netns
        self.reqids = reqids
        self._sock = XfrmSocket(netns, groups=(c.XFRMNLGRP_EXPIRE, c.XFRMNLGRP_ACQUIRE))
        self._pending: deque[XfrmEvent] = deque()

    async def open(self) -> XfrmMonitor:
        await self._sock.open()
        return self

    def close(self) -> None:
        self._sock.close()

    async def __aenter__(self) -> XfrmMonitor:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[XfrmEvent]:
        return self

    async def __anext__(self) -> XfrmEvent:
        await self._sock.open()
        while not self._pending:
            try:
                datagram = await self._sock.recv()
            except OSError as exc:
                if exc.errno != errno_mod.ENOBUFS:
                    raise
                # The kernel had to drop notifications for us; the socket stays usable.
                log.warning("xfrm_notifications_lost", netns=self.netns)
                return XfrmEventsLost("receive buffer overrun (ENOBUFS)")
            self._pending.extend(self._events(datagram))
        return self._pending.popleft()

    def _events(self, datagram: bytes) -> list[XfrmEvent]:
        out: list[XfrmEvent] = []
        for mtype, _flags, _seq, msg, _detail in parse_datagram(datagram):
            event: SaExpired | SaAcquire
            if isinstance(msg, int):
                continue
            if mtype == c.XFRM_MSG_EXPIRE:
                event = parse_expire(msg)
            elif mtype == c.XFRM_MSG_ACQUIRE:
                event = parse_acquire(msg)
            else:
                continue
            if self.reqids is None or event.reqid in self.reqids:
                out.append(event)
        return out

    async def next(self, timeout: float) -> XfrmEvent:
        """The next event, or TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()
