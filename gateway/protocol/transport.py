"""Thin asyncio TCP transport around :class:`Node` (the only I/O module of gateway.protocol).

It owns sockets, the clocks, a worker thread and nothing else: bytes read go into
``node.receive``, the node's sends are written back, its handshake jobs (signatures, ML-KEM) run
in a worker thread so the loop keeps serving rekeys, and every other action goes to the daemon
through ``on_action``, whose results come back through :meth:`Endpoint.handle`. Timers: one loop
timer armed at ``node.next_deadline()`` after every input (an idle endpoint sleeps until its next
keepalive or rekey). Dialers wait on an event that the end of their peer's session sets. A clean
stop is :meth:`Endpoint.drain` (in-flight exchanges finish, bounded), then :meth:`~Endpoint.aclose`.

Pre-authentication limits (see admission.py): per-source and global caps on unauthenticated
connections, reserved slots for configured peer addresses, a per-source token bucket on new
connections, checked on the raw accepted socket: a refused connection is reset before asyncio
builds anything for it. The core cuts a connection without a Hello after ``hello_timeout`` and
any handshake after ``handshake_timeout``. A peer that does not read what we write is cut.
Refusals and closes of never-authenticated connections are summed up in one log line per 10 s
(a flood must not become a log flood) and are not passed to ``on_action``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import random
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import structlog

from gateway.protocol.admission import Admission, source_of
from gateway.protocol.constants import DEFAULT_PORT, MAX_PENDING_UNAUTHENTICATED
from gateway.protocol.constants import TransportLimits as _L
from gateway.protocol.events import Action, Close, Event, Job, Output, SessionUp
from gateway.protocol.machine import Node
from gateway.protocol.reconfig import PeerAddress, PeerConfig

__all__ = ["Endpoint", "PeerAddress"]

log = structlog.get_logger("gateway.protocol")
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset, keeps no state


class _Link(asyncio.Protocol):
    """One TCP connection; hands everything to the endpoint."""

    def __init__(self, ep: Endpoint, peer: str | None = None, source: str = "",
                 reserved: bool = False) -> None:
        self.ep, self.peer, self.conn = ep, peer, 0
        self.transport: asyncio.Transport | None = None
        self.source, self.reserved, self.counted = source, reserved, peer is None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.peer is None:
            self.ep._accepted(self)

    def data_received(self, data: bytes) -> None:
        self.ep._data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ep._lost(self)
        if not self.closed.done():
            self.closed.set_result(None)


class Endpoint:
    """Runs one Node over TCP. ``on_action`` receives every action in order (Close and SessionUp
    too, for logging). It must not block; it performs actions in its own tasks and reports their
    results with :meth:`handle` later (not from inside the callback), e.g. via ``call_soon``.
    ``peers``: the configured peers' addresses (each :meth:`dial` adds its own too); connections
    from them get reserved pre-authentication slots. ``max_pending`` caps unauthenticated
    connections from all other sources together."""

    def __init__(self, node: Node, on_action: Callable[[Action], None], *,
                 max_pending: int = MAX_PENDING_UNAUTHENTICATED,
                 peers: Iterable[PeerAddress] = (), admission: Admission | None = None) -> None:
        self.node, self._on_action = node, on_action
        node.offload = True
        self.admission = admission or Admission(max_pending=max_pending)
        self._links: dict[int, _Link] = {}
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dialers: dict[str, tuple[PeerAddress, asyncio.Task[None]]] = {}
        self._addresses: dict[str, PeerAddress] = {a.peer: a for a in peers}
        self._session_links: dict[int, str] = {}  # conn -> peer, for established sessions
        self._session_gone: dict[str, asyncio.Event] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "qkd-handshake")
        self._closing = False
        self._drained: asyncio.Event | None = None  # set once a drain finds nothing running
        self.rejected = self.wakeups = 0  # refused connections; timer firings (idle benchmark)

    @property
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- lifecycle ---------------------------------------------------------------------------
    async def listen(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
        """Start accepting; returns the bound port (pass 0 for an ephemeral one). ``host`` "::"
        listens on IPv6 and IPv4 where the system allows it."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        family, addr = infos[0][0], infos[0][4]
        dual = family == socket.AF_INET6 and host in ("::", "") and socket.has_dualstack_ipv6()
        sock = socket.create_server(addr[:2], family=family, backlog=_L.BACKLOG,
                                    dualstack_ipv6=dual)
        sock.setblocking(False)
        self._listener = sock
        loop.add_reader(sock.fileno(), self._accept_ready)
        await self._resolve_peers()
        self._arm()
        return int(sock.getsockname()[1])

    def dial(self, addr: PeerAddress) -> None:
        """Keep a session to ``addr.peer`` up: (re)connect with capped, jittered backoff."""
        if addr.peer not in self.node.peers:
            raise ValueError(f"cannot dial {addr.peer!r}: not a configured peer "
                             f"(known: {sorted(self.node.peers)})")
        old = self._dialers.pop(addr.peer, None)
        if old is not None:
            old[1].cancel()
        self._addresses[addr.peer] = addr
        task = self._spawn(self._dialer(addr), f"protocol-dial-{addr.peer}")
        self._dialers[addr.peer] = (addr, task)
        self._spawn(self._resolve_peers(), "protocol-resolve")
        self._arm()

    def disconnect(self, peer: str) -> int:
        """Reset every connection with ``peer`` (a forced reconnect: the dialer redials at
        once). Returns how many were reset."""
        conn = self.node.session_conn(peer)
        links = [lk for c, lk in self._links.items() if lk.peer == peer or c == conn]
        for link in links:
            if link.transport is not None:
                link.transport.abort()  # connection_lost tells the core
        return len(links)

    def handle(self, event: Event) -> None:
        """Feed the result of an action back into the core."""
        self._apply(self.node.handle(event, self._now))

    def rekey_now(self, tunnel: str) -> None:
        """Force a rekey of ``tunnel`` (``qkd-gateway rekey``); ValueError says why not."""
        self._apply(self.node.rekey_now(tunnel, self._now))

    def reconfigure(self, peers: Mapping[str, PeerConfig],
                    addresses: Iterable[PeerAddress]) -> None:
        """Live reload: ``Node.reconfigure`` plus the dialers (removed peers stop, new or moved
        ones start). Raises PolicyError (nothing changed) for an inconsistent configuration."""
        self._apply(self.node.reconfigure(peers, self._now))
        wanted = {a.peer: a for a in addresses}
        for peer, (addr, task) in list(self._dialers.items()):
            if wanted.get(peer) != addr:
                task.cancel()
                del self._dialers[peer]
        self._addresses = dict(wanted)
        for peer, addr in wanted.items():
            if peer not in self._dialers and peer in self.node.peers:
                self.dial(addr)
        self._spawn(self._resolve_peers(), "protocol-resolve")

    async def drain(self, timeout: float | None = None) -> int:
        """A clean stop's first step, while the daemon still performs actions: Node.drain, then
        wait for the exchanges in flight, at most ``timeout`` (``timers.shutdown_drain``)."""
        self._drained = asyncio.Event()
        self._apply(self.node.drain(self._now))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout or self.node.timers.shutdown_drain):
                await self._drained.wait()
        return self.node.exchanges_running()  # still running: aclose reports their keys

    async def aclose(self) -> None:
        if self._closing:
            return
        if not self.node.draining:  # the peers learn of the stop (see Node.drain) all the same
            self._apply(self.node.drain(self._now))
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
        for t in list(self._tasks):
            t.cancel()
        # Links first: a dialer whose cancel was lost (3.11's wait_for) waits on its link.
        for transport in [lk.transport for lk in self._links.values() if lk.transport]:
            transport.abort()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._apply(self.node.shutdown(self._now))  # keys still held: reported, not lost

    # -- connections -------------------------------------------------------------------------
    def _accept_ready(self) -> None:
        """The listening socket is readable: admit or reset each waiting connection."""
        assert self._listener is not None
        for _ in range(_L.ACCEPT_BATCH):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again at the next readiness
                self._note(f"accept failed: {exc.strerror}")
                return
            source = source_of(str(addr[0]))
            verdict = self.admission.admit(source, self._now)
            if self._closing or not verdict.admitted:
                self.rejected += 1
                self._note(verdict.reason or "shutting down")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                sock.close()  # RST: nothing read, nothing kept
                continue
            sock.setblocking(False)
            link = _Link(self, None, source, verdict.reserved)
            self._spawn(self._adopt(sock, link), "protocol-accept")

    async def _adopt(self, sock: socket.socket, link: _Link) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: link, sock=sock)
        except OSError:
            self._release(link)
            sock.close()

    def _accepted(self, link: _Link) -> None:
        link.conn = next(self._ids)
        self._links[link.conn] = link
        self._apply(self.node.accept(link.conn, self._now))

    def _note(self, what: str) -> None:
        """Count a pre-authentication refusal or close; log the sums every 10 s at most."""
        counts = self.admission.note(what, self._now, _L.SUMMARY_INTERVAL)
        if counts is not None:
            log.warning("unauthenticated_connections_refused_or_closed", counts=counts)

    def _data(self, link: _Link, data: bytes) -> None:
        if link.conn in self._links:
            self._apply(self.node.receive(link.conn, data, self._now, time.time()))

    def _lost(self, link: _Link) -> None:
        self._release(link)
        if self._links.pop(link.conn, None) is not None:
            self._apply(self.node.connection_lost(link.conn, self._now))
        self._session_ended(link.conn)

    def _release(self, link: _Link) -> None:
        if link.counted:
            link.counted = False
            self.admission.release(link.source, link.reserved)

    def _close(self, conn: int, *, abort: bool = False) -> None:
        link = self._links.pop(conn, None)
        if link is None:
            return
        self._release(link)
        self._session_ended(conn)
        if link.transport is not None:
            link.transport.abort() if abort else link.transport.close()

    def _session_ended(self, conn: int) -> None:
        peer = self._session_links.pop(conn, None)
        if peer is not None:
            self._session_gone.setdefault(peer, asyncio.Event()).set()

    # -- the core's output -------------------------------------------------------------------
    def _apply(self, out: Output) -> None:
        for s in out.sends:
            link = self._links.get(s.conn)
            if link is None or link.transport is None:
                continue
            link.transport.write(s.data)
            session = s.conn in self._session_links
            if link.transport.get_write_buffer_size() > (
                    _L.WRITE_LIMIT_SESSION if session else _L.WRITE_LIMIT_PENDING):
                log.warning("connection_closed", conn=s.conn, reason="peer does not read")
                self._close(s.conn, abort=True)
                self._apply(self.node.connection_lost(s.conn, self._now))
        for job in out.jobs:
            fut = asyncio.get_running_loop().run_in_executor(self._pool, job.run)
            fut.add_done_callback(lambda f, j=job: self._job_done(j, f))  # type: ignore[misc]
        for a in out.actions:
            if isinstance(a, Close):
                link = self._links.get(a.conn)
                if a.conn not in self._session_links and link is not None and link.peer is None:
                    self._note(a.reason.split(":", 1)[0])  # never authenticated: summed up
                    self._close(a.conn, abort=True)
                    continue
                log.info("connection_closed", conn=a.conn, reason=a.reason)
                self._close(a.conn)
            elif isinstance(a, SessionUp):
                log.info("session_up", peer=a.peer, conn=a.conn, initiator=a.initiator)
                link = self._links.get(a.conn)
                if link is not None:
                    self._release(link)  # authenticated: no longer a pre-auth slot
                self._session_links[a.conn] = a.peer
                self._session_gone.setdefault(a.peer, asyncio.Event()).clear()
            self._on_action(a)
        if self._drained is not None and not self.node.exchanges_running():
            self._drained.set()
        self._arm()

    def _job_done(self, job: Job, fut: asyncio.Future[object]) -> None:
        if fut.cancelled() or self._closing:
            return
        exc = fut.exception()
        if exc is not None:
            # A bug, not a protocol failure (those come back as results): drop the connection.
            log.error("handshake_job_failed", conn=job.conn, error=repr(exc))
            self._close(job.conn, abort=True)
            self._apply(self.node.connection_lost(job.conn, self._now))
            return
        self._apply(self.node.job_done(job, fut.result(), self._now))

    # -- timer -------------------------------------------------------------------------------
    def _arm(self) -> None:
        deadline = self.node.next_deadline()
        if self._closing or deadline is None:
            return  # (a timer still armed fires once and finds nothing to do)
        when = deadline + _L.TIMER_SLACK
        if self._timer is not None:
            if self._timer.when() <= when:
                return  # an earlier (or the same) firing re-arms after it ticks
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.wakeups += 1
        try:
            self._apply(self.node.tick(self._now))
        except Exception:
            # A failing action handler must not stop the timers; exceptions carry no key bytes.
            log.exception("tick_failed")
            self._arm()

    # -- dialling ----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _dialer(self, addr: PeerAddress) -> None:
        failures = 0
        gone = self._session_gone.setdefault(addr.peer, asyncio.Event())
        while not self._closing:
            while self.node.session_conn(addr.peer) is not None:
                gone.clear()  # a session exists (perhaps dialled by the peer): wait for its end
                await gone.wait()
            loop = asyncio.get_running_loop()
            link = _Link(self, addr.peer)
            try:
                await asyncio.wait_for(loop.create_connection(
                    lambda: link, addr.host, addr.port), _L.CONNECT_TIMEOUT)  # noqa: B023
            except (OSError, TimeoutError) as exc:
                log.info("dial_failed", peer=addr.peer, host=addr.host, port=addr.port,
                         error=type(exc).__name__)
                failures += 1
            else:
                if self._closing and link.transport is not None:  # see aclose
                    link.transport.abort()
                    return
                link.conn = next(self._ids)
                self._links[link.conn] = link
                started = self._now
                self._apply(self.node.connect(link.conn, addr.peer, started, time.time()))
                await asyncio.shield(link.closed)
                # A connection that outlived its handshake was a working session: redial at
                # once (re-authentication, peer restart); a quick failure backs off.
                lived = self._now - started > self.node.timers.handshake_timeout
                failures = 0 if lived else failures + 1
            if failures:
                delay = min(_L.DIAL_BACKOFF_CAP,
                            _L.DIAL_BACKOFF_BASE * 2 ** min(failures - 1, 10))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _resolve_peers(self) -> None:
        """Configured peer hosts -> addresses, for their reserved slots."""
        loop = asyncio.get_running_loop()
        found: set[str] = set()
        for addr in list(self._addresses.values()):
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM),
                    _L.RESOLVE_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                log.warning("peer_address_unresolved", peer=addr.peer, host=addr.host,
                            error=type(exc).__name__)
                continue
            found.update(str(i[4][0]) for i in infos)
        self.admission.set_peer_sources(found)

