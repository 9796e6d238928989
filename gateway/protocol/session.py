"""Connections and control sessions of a node: handshake dispatch, crypto jobs, policy lists,
keepalives. Pure (no I/O, no clock); :class:`gateway.protocol.machine.Node` builds on it.

A connection becomes a peer's session after the handshake; if two sessions with one peer exist
(both dialled at once), both ends keep the same one: a newer session from the same initiator
replaces the older one (the peer reconnected), otherwise the session dialled by the lower SAE ID
wins. The handshake's expensive steps run as :class:`~gateway.protocol.events.Job` s when
``offload`` is set (the transport runs them in a worker thread), inline otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.identity import SiteIdentity
from gateway.protocol.channel import Channel
from gateway.protocol.constants import KEYCHECK_MAX_ENTRIES, STOP_NOTICE_TUNNEL, Timers
from gateway.protocol.errors import ProtocolError, StateError
from gateway.protocol.events import Close, Job, Output, Send, SessionUp
from gateway.protocol.handshake import (
    Established,
    HelloGuard,
    InitiatorHandshake,
    PeerInfo,
    ResponderHandshake,
)
from gateway.protocol.inner import (
    AbortCode,
    InnerMessage,
    Keepalive,
    KeyCheck,
    PolicyUpdate,
    RekeyAbort,
    decode_inner,
    encode_inner,
    policy_update_chunks,
)
from gateway.protocol.messages import FrameType
from gateway.protocol.policy import TunnelPolicy, policy_digest
from gateway.protocol.sync import PolicyView
from gateway.protocol.timers import TimerHeap
from gateway.protocol.wire import Frame, FrameSplitter

__all__ = ["Conn", "SessionLayer"]

Finisher = Callable[["Conn", object, float, Output], None]


@dataclass(slots=True, eq=False)
class Conn:
    conn: int
    created: float
    splitter: FrameSplitter = field(default_factory=FrameSplitter)
    initiator: InitiatorHandshake | None = None
    responder: ResponderHandshake | None = None
    peer: str | None = None  # known once established (or dialled)
    channel: Channel | None = None
    initiator_sae: str = ""
    last_rx: float = 0.0
    last_tx: float = 0.0
    established: float | None = None
    job: int | None = None  # id of the crypto job in flight
    on_job: Finisher | None = None
    view: PolicyView | None = None  # the peer's policy list (sessions only)
    cursor: int = 0  # round-robin position of the key checks
    stop_notice: float | None = None  # when the peer said it stops (cut after dead_after)
    sched: float | None = None


class SessionLayer:
    """Connections, handshakes and sessions; the tunnel side is :class:`Node`'s."""

    identity: SiteIdentity
    sae_id: str
    timers: Timers
    _heap: TimerHeap
    offload: bool

    def _init_sessions(self) -> None:
        self._conns: dict[int, Conn] = {}
        self._session: dict[str, int] = {}  # peer -> conn of its established session
        self._guard = HelloGuard()
        self._job_ids = itertools.count(1)
        self._hello_ts = -1

    # -- hooks the node provides -------------------------------------------------------------
    def _peer_info(self, peer: str) -> tuple[str, PeerInfo]:
        raise NotImplementedError

    def _lookup(self, sae: str) -> PeerInfo | None:
        raise NotImplementedError

    def _by_sae_name(self, sae: str) -> str | None:
        raise NotImplementedError

    def _local_policies(self, peer: str) -> dict[str, TunnelPolicy]:
        raise NotImplementedError

    def _inner(self, peer: str, msg: InnerMessage, now: float, out: Output) -> None:
        raise NotImplementedError

    def _view_changed(self, peer: str, names: set[str], now: float, out: Output) -> None:
        raise NotImplementedError

    def _session_gone(self, peer: str, now: float, out: Output, peer_stopped: bool) -> None:
        raise NotImplementedError

    def _handshake_gone(self, peer: str, now: float, out: Output) -> None:
        raise NotImplementedError

    def _key_checks(self, peer: str, c: Conn) -> list[KeyCheck]:
        raise NotImplementedError

    # -- inputs ------------------------------------------------------------------------------
    def connect(self, conn: int, peer: str, now: float, wall: float | None = None) -> Output:
        """We dialled ``peer`` on ``conn``: send Hello. ``wall``: this host's wall clock (Unix
        seconds) for the Hello's timestamp; None uses ``now`` (tests)."""
        sae, info = self._peer_info(peer)
        self._hello_ts = max(int((now if wall is None else wall) * 1e6), self._hello_ts + 1)
        hs = InitiatorHandshake(self.identity, self.sae_id, sae, info.keys, info.policy_count,
                                info.policy_digest, self._hello_ts)
        c = Conn(conn, now, initiator=hs, peer=peer, initiator_sae=self.sae_id, last_rx=now)
        self._conns[conn] = c
        out = Output.empty()
        self._send_frame(out, c, FrameType.HELLO, hs.hello, now)
        self._sched_conn(c)
        return out

    def accept(self, conn: int, now: float) -> Output:
        c = Conn(conn, now, responder=ResponderHandshake(self.identity, self.sae_id, self._lookup,
                                                         self._guard), last_rx=now)
        self._conns[conn] = c
        self._sched_conn(c)
        return Output.empty()

    def receive(self, conn: int, data: bytes, now: float, wall: float | None = None) -> Output:
        """Bytes arrived on ``conn``. ``wall``: the wall clock, for the Hello freshness check
        (None skips the clock window; the replay rule still applies)."""
        out = Output.empty()
        c = self._conns.get(conn)
        if c is None:
            return out
        try:
            for frame in c.splitter.feed(data):
                self._frame(c, frame, now, wall, out)
                if conn not in self._conns:
                    break
        except ProtocolError as exc:
            self._drop(c, exc.reason, out, now, detail=str(exc))
        if conn in self._conns:
            self._heap.schedule_by(c, self._conn_wakeup(c))
        return out

    def connection_lost(self, conn: int, now: float) -> Output:
        out = Output.empty()
        c = self._conns.get(conn)
        if c is not None:
            self._forget(c, out, now)
        return out

    def job_done(self, job: Job, result: object, now: float) -> Output:
        """The result of a :class:`Job` (a value, or the ProtocolError it raised)."""
        out = Output.empty()
        c = self._conns.get(job.conn)
        if c is None or c.job != job.id or c.on_job is None:
            return out  # the connection is gone (timed out meanwhile): drop the result
        finish, c.job, c.on_job = c.on_job, None, None
        try:
            if isinstance(result, ProtocolError):
                raise result
            finish(c, result, now, out)
        except ProtocolError as exc:
            self._drop(c, exc.reason, out, now, detail=str(exc))
        if job.conn in self._conns:
            self._sched_conn(c)
        return out

    # -- introspection -----------------------------------------------------------------------
    def session_conn(self, peer: str) -> int | None:
        return self._session.get(peer)

    def pending_connections(self) -> int:
        return sum(1 for c in self._conns.values() if c.established is None)

    def peer_stopping(self, peer: str) -> bool:
        """The peer announced its clean stop in the current session (see Node.drain)."""
        c = self._conns.get(self._session.get(peer, -1))
        return c is not None and c.stop_notice is not None

    def _superseded_soon(self, peer: str) -> bool:
        """A handshake with ``peer`` is under way whose session will replace the current one
        (the rule of _established: both ends dialled at once, the session dialled by the lower
        SAE ID stays): an exchange started now would be cut short with the current session."""
        cur = self._conns.get(self._session.get(peer, -1))
        if cur is None or len(self._conns) == len(self._session):
            return False  # (no handshake under way at all: the common case, O(1))
        try:
            sae = self._peer_info(peer)[0]
        except ValueError:  # removed by a reload: its session is on its way out
            return False
        for c in self._conns.values():
            if c.established is None:
                rs = c.responder
                started_by = self.sae_id if c.initiator is not None and c.peer == peer else (
                    rs.peer_sae if rs is not None and rs.peer_sae == sae else None)
                if started_by is not None and started_by in (cur.initiator_sae,
                                                             min(self.sae_id, sae)):
                    return True
        return False

    def _send_stop_notices(self, now: float, out: Output) -> None:
        for conn in self._session.values():
            self._seal(self._conns[conn], RekeyAbort(STOP_NOTICE_TUNNEL, 0, AbortCode.SHUTDOWN, 0),
                       now, out)

    # -- handshake ---------------------------------------------------------------------------
    def _frame(self, c: Conn, f: Frame, now: float, wall: float | None, out: Output) -> None:
        if c.job is not None:
            raise StateError("message during the handshake's computation")
        if c.channel is not None:
            if f.type != FrameType.RECORD:
                raise StateError("plaintext frame inside an established session")
            msg = decode_inner(c.channel.open(f.header, f.payload))
            c.last_rx = now
            if c.peer is not None and self._session.get(c.peer) == c.conn:
                if isinstance(msg, PolicyUpdate):
                    self._on_policy_update(c, msg, now, out)
                elif isinstance(msg, RekeyAbort) and msg.code is AbortCode.SHUTDOWN:
                    c.stop_notice = now if c.stop_notice is None else c.stop_notice
                else:
                    self._inner(c.peer, msg, now, out)
            return
        rs = c.responder
        if rs is not None and not rs.hello_seen and f.type == FrameType.HELLO:
            self._run(c, rs.on_hello(f.payload, wall), self._replied, out, now)
        elif rs is not None and rs.peer_sae and f.type == FrameType.FINISH:
            est = rs.on_finish(f.payload)
            c.initiator_sae = est.peer_sae
            self._established(c, est, now, out)
        elif c.initiator is not None and f.type == FrameType.HELLO_REPLY:
            self._run(c, c.initiator.on_reply(f.payload), self._finished, out, now)
        else:
            raise StateError(f"frame type 0x{f.type:02x} not expected during the handshake")

    def _run(self, c: Conn, work: Callable[[], object], finish: Finisher, out: Output,
             now: float) -> None:
        if not self.offload:
            finish(c, work(), now, out)
            return
        c.job, c.on_job = next(self._job_ids), finish
        out.jobs.append(Job(c.conn, c.job, lambda: _capture(work)))

    def _replied(self, c: Conn, state: object, now: float, out: Output) -> None:
        assert c.responder is not None
        self._send_frame(out, c, FrameType.HELLO_REPLY, c.responder.replied(state), now)

    def _finished(self, c: Conn, result: object, now: float, out: Output) -> None:
        assert isinstance(result, tuple)
        finish, est = result
        assert isinstance(finish, bytes) and isinstance(est, Established)
        self._send_frame(out, c, FrameType.FINISH, finish, now)
        self._established(c, est, now, out)

    def _established(self, c: Conn, est: Established, now: float, out: Output) -> None:
        peer, local_sae = self._by_sae_name(est.peer_sae), self.sae_id
        info = self._peer_info(peer)[1] if peer is not None else None
        if peer is None or info is None or (est.local_digest, est.peer_keys) != (
                info.policy_digest, info.keys):
            # Reconfigured during the handshake: what it signed or checked is outdated.
            self._drop(c, "reconfigured_during_handshake", out, now)
            return
        c.peer, c.channel, c.established, c.last_rx = peer, est.channel, now, now
        c.initiator = c.responder = None
        old = self._session.get(peer)
        if old is not None and old in self._conns:
            o = self._conns[old]
            keep_new = o.initiator_sae == c.initiator_sae or c.initiator_sae == min(
                local_sae, est.peer_sae)
            if not keep_new:
                self._drop(c, "duplicate_session", out, now)
                return
            self._drop(o, "superseded_session", out, now)
        self._session[peer] = c.conn
        out.actions.append(SessionUp(peer, c.conn, est.initiator))
        local = self._local_policies(peer)
        c.view = PolicyView(est.remote_count, est.remote_digest, local, est.local_digest)
        if c.view.complete:
            self._view_changed(peer, set(local), now, out)
        else:
            self._send_update(c, list(local.values()), [], now, out)

    # -- sessions ----------------------------------------------------------------------------
    def _on_policy_update(self, c: Conn, u: PolicyUpdate, now: float, out: Output) -> None:
        assert c.view is not None and c.peer is not None
        changed = c.view.feed(u)
        if changed is not None:
            self._view_changed(c.peer, changed, now, out)

    def _send_update(self, c: Conn, upserts: list[TunnelPolicy], removals: list[str],
                     now: float, out: Output) -> None:
        assert c.peer is not None
        local = self._local_policies(c.peer)
        for chunk in policy_update_chunks(sorted(upserts, key=lambda p: p.name), sorted(removals),
                                          len(local), policy_digest(local.values())):
            self._seal(c, chunk, now, out)

    def _seal(self, c: Conn, msg: InnerMessage, now: float, out: Output) -> None:
        assert c.channel is not None
        out.sends.append(Send(c.conn, c.channel.seal(encode_inner(msg))))
        c.last_tx = now  # traffic doubles as keepalive: the deadline can only move later
        self._heap.schedule_by(c, self._conn_wakeup(c))

    def _conn_wakeup(self, c: Conn) -> float:
        tm = self.timers
        if c.established is None:
            limit = c.created + tm.handshake_timeout
            if c.responder is not None and not c.responder.hello_seen:
                limit = min(limit, c.created + tm.hello_timeout)
            return limit
        times = [c.last_rx + tm.dead_after, c.last_tx + tm.keepalive_interval]
        if c.stop_notice is not None:  # a peer that said it stops but stays is cut then
            times.append(c.stop_notice + tm.dead_after)
        if c.initiator_sae == self.sae_id:
            times.append(c.established + tm.reauth_interval)
        return min(times)

    def _sched_conn(self, c: Conn) -> None:
        self._heap.schedule(c, self._conn_wakeup(c))

    def _conn_tick(self, c: Conn, now: float, out: Output) -> None:
        tm = self.timers
        if c.established is None:
            hello_late = (c.responder is not None and not c.responder.hello_seen
                          and now >= c.created + tm.hello_timeout)
            if hello_late or now >= c.created + tm.handshake_timeout:
                self._drop(c, "hello_timeout" if hello_late and c.job is None
                           else "handshake_timeout", out, now)
                return
        elif now >= c.last_rx + tm.dead_after:
            self._drop(c, "peer_silent", out, now)
            return
        elif c.stop_notice is not None and now >= c.stop_notice + tm.dead_after:
            self._drop(c, "peer_stop_overdue", out, now)
            return
        elif c.initiator_sae == self.sae_id and now >= c.established + tm.reauth_interval:
            self._drop(c, "reauthenticate", out, now)
            return
        elif c.channel is not None and now >= c.last_tx + tm.keepalive_interval:
            assert c.peer is not None
            checks = self._key_checks(c.peer, c) if self._session.get(c.peer) == c.conn else []
            self._seal(c, Keepalive(tuple(checks[:KEYCHECK_MAX_ENTRIES])), now, out)
        self._sched_conn(c)

    def _send_checks(self, peer: str, checks: list[KeyCheck], now: float, out: Output) -> None:
        conn = self._session.get(peer)
        c = self._conns.get(conn) if conn is not None else None
        if c is None:
            return
        for i in range(0, len(checks), KEYCHECK_MAX_ENTRIES):
            self._seal(c, Keepalive(tuple(checks[i:i + KEYCHECK_MAX_ENTRIES])), now, out)

    def _send_frame(self, out: Output, c: Conn, ftype: int, payload: bytes, now: float) -> None:
        out.sends.append(Send(c.conn, Frame(ftype, payload).header + payload))
        c.last_tx = now

    def _drop(self, c: Conn, reason: str, out: Output, now: float, detail: str = "") -> None:
        self._forget(c, out, now)
        out.actions.append(Close(c.conn, reason if not detail else f"{reason}: {detail}"))

    def _forget(self, c: Conn, out: Output, now: float) -> None:
        self._conns.pop(c.conn, None)
        self._heap.cancel(c)
        c.job = c.on_job = None
        if c.peer is not None and self._session.get(c.peer) == c.conn:
            del self._session[c.peer]
            self._session_gone(c.peer, now, out, c.stop_notice is not None)
            return
        sae = c.responder.peer_sae if c.responder is not None else None
        peer = c.peer or (self._by_sae_name(sae) if sae is not None else None)
        if peer is not None and peer in self._session:
            self._handshake_gone(peer, now, out)  # it may have held exchanges back


def _capture(work: Callable[[], object]) -> object:
    """Run a job; a ProtocolError becomes its result (the node raises it on the loop)."""
    try:
        return work()
    except ProtocolError as exc:
        return exc

