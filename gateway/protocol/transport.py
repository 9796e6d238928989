"""Thin asyncio TCP transport around :class:`Node` (the only I/O module of gateway.protocol).

It owns sockets and the clock and nothing else: bytes read go into ``node.receive``, a timer calls
``node.tick``, and the node's sends are written back; every other action is handed to the daemon
through ``on_action``, whose results come back through :meth:`Endpoint.handle`.

Resource limits: at most MAX_PENDING_UNAUTHENTICATED connections may be in their handshake at once
(more are closed on accept, before any byte is read); a connection is cut by the core's handshake
timeout however slowly it trickles bytes; each read is bounded, and a frame header announcing more
than MAX_FRAME is refused before its payload is buffered. Outgoing data that a peer does not read
(write buffer above a limit) closes that connection instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.protocol.constants import DEFAULT_PORT, MAX_FRAME, MAX_PENDING_UNAUTHENTICATED
from gateway.protocol.events import Action, Close, Event, Output, SessionUp
from gateway.protocol.machine import Node

__all__ = ["Endpoint", "PeerAddress"]

log = structlog.get_logger("gateway.protocol")

_READ_CHUNK = MAX_FRAME
_WRITE_LIMIT = 8 * MAX_FRAME
# Timer resolution: protocol timers are seconds to minutes; 50 ms keeps latency low and CPU idle.
_TICK = 0.05
_CONNECT_TIMEOUT = 5.0
_DIAL_BACKOFF_BASE, _DIAL_BACKOFF_CAP = 0.5, 30.0


@dataclass(frozen=True, slots=True)
class PeerAddress:
    peer: str
    host: str
    port: int = DEFAULT_PORT


class Endpoint:
    """Runs one Node over TCP.

    ``on_action`` receives every action in order (Close and SessionUp too, for logging). It must
    not block; it performs actions in its own tasks and reports their results with
    :meth:`handle` later (not from inside the callback), e.g. via ``loop.call_soon``.
    ``max_pending`` bounds connections that have not finished their handshake.
    """

    def __init__(self, node: Node, on_action: Callable[[Action], None], *,
                 max_pending: int = MAX_PENDING_UNAUTHENTICATED) -> None:
        self.node, self._on_action, self._max_pending = node, on_action, max_pending
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.rejected = 0  # connections refused by the pending limit

    @property
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- lifecycle ---------------------------------------------------------------------------
    async def listen(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
        """Start accepting; returns the bound port (pass 0 for an ephemeral one)."""
        self._server = await asyncio.start_server(self._accepted, host, port)
        self._spawn(self._ticker(), "protocol-tick")
        return int(self._server.sockets[0].getsockname()[1])

    def dial(self, addr: PeerAddress) -> None:
        """Keep a session to ``addr.peer`` up: (re)connect with capped, jittered backoff."""
        if addr.peer not in self.node.peers:
            raise ValueError(f"cannot dial {addr.peer!r}: not a configured peer "
                             f"(known: {sorted(self.node.peers)})")
        self._spawn(self._dialer(addr), f"protocol-dial-{addr.peer}")
        if self._server is None and not any(t.get_name() == "protocol-tick" for t in self._tasks):
            self._spawn(self._ticker(), "protocol-tick")

    async def aclose(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for conn in list(self._writers):
            self._close(conn)

    def handle(self, event: Event) -> None:
        """Feed the result of an action back into the core."""
        self._apply(self.node.handle(event, self._now))

    # -- internals ---------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            try:
                self._apply(self.node.tick(self._now))
            except Exception:
                # A failing action handler must not stop the protocol's timers (timeouts,
                # expiry): log it and keep ticking. Exceptions never carry key bytes.
                log.exception("tick_failed")

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing or self.node.pending_connections() >= self._max_pending:
            self.rejected += 1
            log.warning("connection_refused", remote=_peername(writer),
                        reason="too many unauthenticated connections")
            writer.close()
            return
        conn = next(self._ids)
        self._writers[conn] = writer
        self._apply(self.node.accept(conn, self._now))
        await self._pump(conn, reader)

    async def _dialer(self, addr: PeerAddress) -> None:
        failures = 0
        while True:
            if self.node.session_conn(addr.peer) is not None:
                await asyncio.sleep(_TICK * 4)  # a session exists (perhaps dialled by the peer)
                continue
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(addr.host, addr.port), _CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                log.info("dial_failed", peer=addr.peer, host=addr.host, port=addr.port,
                         error=type(exc).__name__)
                failures += 1
            else:
                conn = next(self._ids)
                self._writers[conn] = writer
                self._apply(self.node.connect(conn, addr.peer, self._now))
                started = self._now
                await self._pump(conn, reader)
                # A connection that outlived its handshake was a working session: redial at
                # once (re-authentication, peer restart); a quick failure backs off.
                lived = self._now - started > self.node.timers.handshake_timeout
                failures = 0 if lived else failures + 1
            if failures:
                delay = min(_DIAL_BACKOFF_CAP, _DIAL_BACKOFF_BASE * 2 ** min(failures - 1, 10))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _pump(self, conn: int, reader: asyncio.StreamReader) -> None:
        # The read timeout is a backstop; the core's handshake and liveness timers cut earlier.
        timeout = max(self.node.timers.dead_after, self.node.timers.handshake_timeout) + 1.0
        try:
            while conn in self._writers:
                data = await asyncio.wait_for(reader.read(_READ_CHUNK), timeout)
                if not data:
                    break
                self._apply(self.node.receive(conn, data, self._now))
        except (OSError, TimeoutError):
            pass
        finally:
            if conn in self._writers:
                self._apply(self.node.connection_lost(conn, self._now))
                self._close(conn)

    def _apply(self, out: Output) -> None:
        for s in out.sends:
            w = self._writers.get(s.conn)
            if w is None:
                continue
            w.write(s.data)
            if w.transport.get_write_buffer_size() > _WRITE_LIMIT:
                log.warning("connection_closed", conn=s.conn, reason="peer does not read")
                self._apply(self.node.connection_lost(s.conn, self._now))
                self._close(s.conn)
        for a in out.actions:
            if isinstance(a, Close):
                log.info("connection_closed", conn=a.conn, reason=a.reason)
                self._close(a.conn)
            elif isinstance(a, SessionUp):
                log.info("session_up", peer=a.peer, conn=a.conn, initiator=a.initiator)
            self._on_action(a)

    def _close(self, conn: int) -> None:
        w = self._writers.pop(conn, None)
        if w is not None:
            w.close()


def _peername(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
