"""The protocol core of one site: all peers, their connections, sessions and tunnels.

Pure state machine. Inputs: ``connect``/``accept`` (a TCP connection exists), ``receive`` (bytes
arrived), ``connection_lost``, ``tick(now)`` (timers) and ``handle(event)`` (results of actions).
Each returns an :class:`Output`: bytes to send per connection and actions for the daemon. The core
never reads a clock, a socket or a file; ``now`` is always an argument.

Connections are identified by integers the caller chooses. A connection becomes a peer's session
after the handshake; if two sessions with one peer exist (both dialled at once), both ends keep
the same one: a newer session from the same initiator replaces the older one (the peer
reconnected), otherwise the session dialled by the lower SAE ID wins.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.identity import PeerPublicKeys, SiteIdentity
from gateway.protocol.channel import Channel
from gateway.protocol.constants import USED_KEY_ID_MEMORY, Timers
from gateway.protocol.errors import PolicyError, ProtocolError, StateError
from gateway.protocol.events import (
    Action,
    Alarm,
    Close,
    Event,
    Output,
    Send,
    SessionUp,
)
from gateway.protocol.exchange import UsedKeyIds
from gateway.protocol.handshake import Established, InitiatorHandshake, ResponderHandshake
from gateway.protocol.messages import (
    AbortCode,
    FrameType,
    InnerMessage,
    Keepalive,
    RekeyAbort,
    decode_inner,
    encode_inner,
)
from gateway.protocol.policy import TunnelPolicy, reconcile
from gateway.protocol.rekey import Tunnel
from gateway.protocol.wire import Frame, FrameSplitter

__all__ = ["Node", "PeerConfig", "TunnelStatus"]


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A pinned peer: its SAE ID, public keys, and the tunnels configured towards it."""

    sae_id: str
    keys: PeerPublicKeys
    tunnels: tuple[TunnelPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    """A tunnel's protocol state for status displays and metrics (times are core ``now``)."""

    tunnel: str
    peer: str
    mode: str
    session_up: bool  # a session with the peer exists and both ends configured it identically
    active_epoch: int  # 0: no key yet
    active_since: float | None
    expired: bool
    rekeys_completed: int
    rekey_in_progress: int | None  # epoch of the unfinished exchange


@dataclass(slots=True)
class _Conn:
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


class _PeerSink:
    """Collects one peer's messages and actions into an Output."""

    __slots__ = ("_conn", "_now", "_out")

    def __init__(self, out: Output, conn: _Conn | None, now: float) -> None:
        self._out, self._conn, self._now = out, conn, now

    def send(self, msg: InnerMessage) -> None:
        c = self._conn
        if c is None or c.channel is None:
            return  # no session: the message is moot, the rekey times out and retries later
        self._out.sends.append(Send(c.conn, c.channel.seal(encode_inner(msg))))
        c.last_tx = self._now  # traffic doubles as keepalive

    def act(self, action: Action) -> None:
        self._out.actions.append(action)


class Node:
    """This site's protocol core. ``peers`` maps a peer name to its pinned config."""

    def __init__(self, identity: SiteIdentity, sae_id: str, peers: Mapping[str, PeerConfig],
                 *, timers: Timers | None = None, rng: random.Random | None = None) -> None:
        self.identity, self.sae_id = identity, sae_id
        self.timers = timers or Timers()
        self._rng = rng or random.SystemRandom()
        self.peers = dict(peers)
        self._by_sae = {p.sae_id: name for name, p in self.peers.items()}
        if len(self._by_sae) != len(self.peers) or sae_id in self._by_sae:
            raise PolicyError("every peer needs its own SAE ID, different from this site's")
        self.tunnels: dict[str, Tunnel] = {}
        for name, pc in self.peers.items():
            for pol in pc.tunnels:
                if pol.name in self.tunnels:
                    raise PolicyError(f"tunnel name {pol.name!r} is used twice; names must be "
                                      "unique on a site")
                self.tunnels[pol.name] = Tunnel(pol, name, sae_id, pc.sae_id, self.timers,
                                                self._rng)
        self._conns: dict[int, _Conn] = {}
        self._session: dict[str, int] = {}  # peer -> conn of its established session
        self._used = UsedKeyIds(USED_KEY_ID_MEMORY)

    # -- inputs ------------------------------------------------------------------------------
    def connect(self, conn: int, peer: str, now: float) -> Output:
        """We dialled ``peer`` on ``conn``: send Hello."""
        pc = self.peers.get(peer)
        if pc is None:
            raise ValueError(f"unknown peer {peer!r}; configured: {sorted(self.peers)}")
        hs = InitiatorHandshake(self.identity, self.sae_id, pc.sae_id, pc.keys, pc.tunnels)
        c = _Conn(conn, now, initiator=hs, peer=peer, initiator_sae=self.sae_id, last_rx=now)
        self._conns[conn] = c
        out = Output.empty()
        self._send_frame(out, c, FrameType.HELLO, hs.hello, now)
        return out

    def accept(self, conn: int, now: float) -> Output:
        self._conns[conn] = _Conn(conn, now, responder=ResponderHandshake(
            self.identity, self.sae_id, self._lookup), last_rx=now)
        return Output.empty()

    def receive(self, conn: int, data: bytes, now: float) -> Output:
        out = Output.empty()
        c = self._conns.get(conn)
        if c is None:
            return out
        try:
            for frame in c.splitter.feed(data):
                self._frame(c, frame, now, out)
                if conn not in self._conns:
                    break
        except ProtocolError as exc:
            self._drop(c, exc.reason, out, detail=str(exc))
        return out

    def connection_lost(self, conn: int, now: float) -> Output:
        out = Output.empty()
        c = self._conns.get(conn)
        if c is not None:
            self._forget(c, out)
        return out

    def handle(self, event: Event, now: float) -> Output:
        out = Output.empty()
        t = self.tunnels.get(event.tunnel)
        if t is not None:
            t.on_event(event, now, self._sink(out, t.peer, now))
        return out

    def tick(self, now: float) -> Output:
        out = Output.empty()
        tm = self.timers
        for c in list(self._conns.values()):
            if c.established is None and now >= c.created + tm.handshake_timeout:
                self._drop(c, "handshake_timeout", out)
            elif c.established is not None and now >= c.last_rx + tm.dead_after:
                self._drop(c, "peer_silent", out)
            elif (c.established is not None and c.initiator_sae == self.sae_id
                  and now >= c.established + tm.reauth_interval):
                self._drop(c, "reauthenticate", out)
            elif c.channel is not None and now >= c.last_tx + tm.keepalive_interval:
                c.last_tx = now
                out.sends.append(Send(c.conn, c.channel.seal(encode_inner(Keepalive()))))
        for t in self.tunnels.values():
            t.tick(now, self._sink(out, t.peer, now))
        return out

    def restore_epoch(self, tunnel: str, epoch: int) -> None:
        """After a restart: the last epoch this tunnel activated (from the daemon's state
        store). New exchanges continue above it, so epochs keep increasing across restarts
        without a STALE_EPOCH round trip. It restores no keys: those stay the daemon's."""
        t = self.tunnels[tunnel]
        t.highest = max(t.highest, epoch)
        t.last_attempt = max(t.last_attempt, epoch)

    def set_tunnel_timers(self, tunnel: str, rekey_after: float, reject_after: float) -> None:
        """Per-tunnel rekey interval and key lifetime (the configured ones, or the daemon's
        stretched interval when the KMS runs low on keys). The backup side keeps its offset:
        it steps in after ``rekey_after_backup / rekey_after`` of the interval (13/12 with
        the defaults: 130 s of 120 s)."""
        if not 0 < rekey_after < reject_after:
            raise ValueError("need 0 < rekey_after < reject_after")
        t = self.tunnels[tunnel]
        ratio = self.timers.rekey_after_backup / self.timers.rekey_after
        t.timers = dataclasses.replace(self.timers, rekey_after=rekey_after,
                                       rekey_after_backup=min(rekey_after * ratio,
                                                              (rekey_after + reject_after) / 2),
                                       reject_after=reject_after)

    # -- introspection -----------------------------------------------------------------------
    def session_conn(self, peer: str) -> int | None:
        return self._session.get(peer)

    def tunnel_status(self, tunnel: str) -> TunnelStatus:
        """Raises KeyError for a tunnel this node does not have."""
        t = self.tunnels[tunnel]
        return TunnelStatus(t.name, t.peer, t.policy.mode.label, t.enabled_at is not None,
                            t.active_epoch, t.active_at, t.expired, t.completed,
                            t.pending.epoch if t.pending else None)

    def pending_connections(self) -> int:
        return sum(1 for c in self._conns.values() if c.established is None)

    def next_deadline(self) -> float | None:
        """Earliest time ``tick`` has something to do (a hint for the transport's timer)."""
        times = [t.due() for t in self.tunnels.values()]
        times += [t.pending.started + self.timers.rekey_timeout
                  for t in self.tunnels.values() if t.pending]
        times += [c.created + self.timers.handshake_timeout
                  for c in self._conns.values() if c.established is None]
        times += [c.last_tx + self.timers.keepalive_interval
                  for c in self._conns.values() if c.channel is not None]
        return min((x for x in times if x is not None), default=None)

    # -- internals ---------------------------------------------------------------------------
    def _lookup(self, sae: str) -> tuple[PeerPublicKeys, tuple[TunnelPolicy, ...]] | None:
        name = self._by_sae.get(sae)
        return None if name is None else (self.peers[name].keys, self.peers[name].tunnels)

    def _sink(self, out: Output, peer: str, now: float) -> _PeerSink:
        conn = self._session.get(peer)
        return _PeerSink(out, self._conns.get(conn) if conn is not None else None, now)

    def _send_frame(self, out: Output, c: _Conn, ftype: int, payload: bytes, now: float) -> None:
        out.sends.append(Send(c.conn, Frame(ftype, payload).header + payload))
        c.last_tx = now

    def _frame(self, c: _Conn, f: Frame, now: float, out: Output) -> None:
        if c.channel is not None:
            if f.type != FrameType.RECORD:
                raise StateError("plaintext frame inside an established session")
            msg = decode_inner(c.channel.open(f.header, f.payload))
            c.last_rx = now
            if c.peer is not None and self._session.get(c.peer) == c.conn:
                self._inner(c.peer, msg, now, out)
            return
        if c.responder is not None and c.responder.peer_sae is None and f.type == FrameType.HELLO:
            self._send_frame(out, c, FrameType.HELLO_REPLY, c.responder.on_hello(f.payload), now)
        elif c.responder is not None and c.responder.peer_sae and f.type == FrameType.FINISH:
            est = c.responder.on_finish(f.payload)
            c.initiator_sae = est.peer_sae
            self._established(c, est, now, out)
        elif c.initiator is not None and f.type == FrameType.HELLO_REPLY:
            finish, est = c.initiator.on_reply(f.payload)
            self._send_frame(out, c, FrameType.FINISH, finish, now)
            self._established(c, est, now, out)
        else:
            raise StateError(f"frame type 0x{f.type:02x} not expected during the handshake")

    def _established(self, c: _Conn, est: Established, now: float, out: Output) -> None:
        peer = self._by_sae[est.peer_sae]
        c.peer, c.channel, c.established, c.last_rx = peer, est.channel, now, now
        c.initiator = c.responder = None
        old = self._session.get(peer)
        if old is not None and old in self._conns:
            o = self._conns[old]
            keep_new = o.initiator_sae == c.initiator_sae or c.initiator_sae == min(
                self.sae_id, est.peer_sae)
            if not keep_new:
                self._drop(c, "duplicate_session", out)
                return
            self._drop(o, "superseded_session", out)
        self._session[peer] = c.conn
        out.actions.append(SessionUp(peer, c.conn, est.initiator))
        enabled, refused = reconcile(self.peers[peer].tunnels, est.remote_policies)
        for name, why in refused:
            out.actions.append(Alarm("policy_mismatch", peer, name, why))
        for pol in enabled:
            self.tunnels[pol.name].session_up(now)
        sink = self._sink(out, peer, now)
        for pol in enabled:
            self.tunnels[pol.name].tick(now, sink)

    def _inner(self, peer: str, msg: InnerMessage, now: float, out: Output) -> None:
        if isinstance(msg, Keepalive):
            return
        sink = self._sink(out, peer, now)
        t = self.tunnels.get(msg.tunnel)
        if t is None or t.peer != peer:
            # Another peer's tunnel name, or none: answer without touching any state.
            if not isinstance(msg, RekeyAbort):
                sink.send(RekeyAbort(msg.tunnel, msg.epoch, AbortCode.UNKNOWN_TUNNEL, 0))
            return
        t.on_message(msg, now, sink, self._used)

    def _drop(self, c: _Conn, reason: str, out: Output, detail: str = "") -> None:
        self._forget(c, out)
        out.actions.append(Close(c.conn, reason if not detail else f"{reason}: {detail}"))

    def _forget(self, c: _Conn, out: Output) -> None:
        self._conns.pop(c.conn, None)
        if c.peer is not None and self._session.get(c.peer) == c.conn:
            del self._session[c.peer]
            for t in self.tunnels.values():
                if t.peer == c.peer:
                    t.session_down(out.actions.append)
