"""Fault injection for one simulated KME: the misbehaviour real KMS servers show under load.

A :class:`Faults` object is mutable and read on every request, so a test flips a fault on and
off while clients are connected. The aiohttp middleware applies them in this order, before
authentication (a struggling server fails before it looks at who is asking):

1. ``paused``: the request is accepted and read but not answered until ``paused`` is cleared
   (or the KME stops, which closes the connection unanswered);
2. ``latency``: seconds added before the answer;
3. ``drop_rate``: probability of closing the connection without answering;
4. ``error_503_rate``: probability of answering 503 with an Error body.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.kms.sim.errors import Unavailable

__all__ = ["MSG_INJECTED_503", "Faults", "faults_middleware"]

MSG_INJECTED_503 = "injected fault: service unavailable"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Faults:
    """The faults of one KME. All fields may be changed at any time."""

    def __init__(self) -> None:
        self.latency = 0.0
        self.error_503_rate = 0.0
        self.drop_rate = 0.0
        self.requests = 0  # requests seen, faulted or not: lets tests prove a fault was hit
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._stopping = asyncio.Event()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    @paused.setter
    def paused(self, value: bool) -> None:
        if value:
            self._resumed.clear()
        else:
            self._resumed.set()

    def clear(self) -> None:
        """Back to a healthy server."""
        self.latency = self.error_503_rate = self.drop_rate = 0.0
        self.paused = False

    def __setattr__(self, name: str, value: object) -> None:
        # Validate on assignment so a bad test setting fails at the line that made it, not as
        # a 500 inside some later request.
        if name in ("error_503_rate", "drop_rate"):
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        elif name == "latency" and (not isinstance(value, int | float) or value < 0):
            raise ValueError(f"latency must be >= 0 seconds, got {value!r}")
        object.__setattr__(self, name, value)

    async def _wait_resumed(self) -> bool:
        """Wait until resumed; False when the KME is stopping instead."""
        if not self.paused:
            return True
        resumed = asyncio.ensure_future(self._resumed.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({resumed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            resumed.cancel()
            stopping.cancel()
        return not self._stopping.is_set()

    def _stop(self) -> None:
        self._stopping.set()

    def _start(self) -> None:
        self._stopping.clear()


def _drop(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    # aiohttp will find the transport closed and write nothing.
    return web.Response(status=503)


def faults_middleware(faults: Faults) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        faults.requests += 1
        if not await faults._wait_resumed():
            return _drop(request)
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if faults.drop_rate and random.random() < faults.drop_rate:
            return _drop(request)
        if faults.error_503_rate and random.random() < faults.error_503_rate:
            raise Unavailable(MSG_INJECTED_503)
        return await handler(request)

    return middleware
