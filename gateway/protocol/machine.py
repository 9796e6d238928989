"""The protocol core of one site: all peers, their connections, sessions and tunnels.

Pure state machine. Inputs: ``connect``/``accept`` (a TCP connection exists), ``receive`` (bytes
arrived), ``connection_lost``, ``job_done`` (a handshake computation finished), ``tick(now)``
(timers), ``handle(event)`` (results of actions), ``reconfigure(peers)`` (live reload) and
``rekey_now(tunnel)``. Each returns an :class:`Output`: bytes to send per connection, actions
for the daemon and (with ``offload``) jobs. The core never reads a clock, a socket or a file;
``now`` is always an argument. ``next_deadline()`` says when ``tick`` is next needed; deadlines
live in a heap, so neither call scans all tunnels.

Connections are identified by integers the caller chooses (see session.py for sessions).
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Mapping, Sequence

from gateway.identity import SiteIdentity
from gateway.protocol.constants import KEYCHECK_MAX_ENTRIES, MAX_CONCURRENT_EXCHANGES, Timers
from gateway.protocol.ephemeral import Ephemerals
from gateway.protocol.events import (
    Action,
    Alarm,
    Event,
    KeysDiscarded,
    KeysFetched,
    KeysTaken,
    Output,
    TunnelStatus,
)
from gateway.protocol.exchange import Sink
from gateway.protocol.handshake import PeerInfo
from gateway.protocol.inner import (
    CHECK_ANSWER,
    AbortCode,
    InnerMessage,
    Keepalive,
    KeyCheck,
    PolicyUpdate,
    RekeyAbort,
)
from gateway.protocol.keyids import KeyIdMemory
from gateway.protocol.policy import TunnelPolicy, mismatch
from gateway.protocol.reconfig import PeerConfig, apply_config, validate_peers
from gateway.protocol.rekey import Tunnel
from gateway.protocol.session import Conn, SessionLayer
from gateway.protocol.sync import PolicyView
from gateway.protocol.timers import TimerHeap

__all__ = ["Node", "PeerConfig", "TunnelStatus", "validate_peers"]


class _PeerSink:
    """Collects one peer's messages and actions into an Output."""

    __slots__ = ("_node", "_now", "_out", "_peer")

    def __init__(self, node: Node, out: Output, peer: str, now: float) -> None:
        self._node, self._out, self._peer, self._now = node, out, peer, now

    def send(self, msg: InnerMessage) -> None:
        conn = self._node._session.get(self._peer)
        c = self._node._conns.get(conn) if conn is not None else None
        if c is None or c.channel is None:
            return  # no session: the message is moot, the rekey times out and retries later
        self._node._seal(c, msg, self._now, self._out)

    def act(self, action: Action) -> None:
        self._out.actions.append(action)

    def may_initiate(self) -> bool:
        return not self._node._halted(self._peer) and len(
            self._node._initiating.get(self._peer, ())) < MAX_CONCURRENT_EXCHANGES

    def ephemerals(self) -> Ephemerals:
        e = self._node._ephemerals.get(self._peer)
        if e is None:
            e = self._node._ephemerals[self._peer] = Ephemerals()
        return e


class Node(SessionLayer):
    """This site's protocol core. ``peers`` maps a peer name to its pinned config."""

    def __init__(self, identity: SiteIdentity, sae_id: str, peers: Mapping[str, PeerConfig],
                 *, timers: Timers | None = None, rng: random.Random | None = None) -> None:
        self.identity, self.sae_id = identity, sae_id
        self.timers = timers or Timers()
        self._rng = rng or random.SystemRandom()
        self.offload = False  # run handshake crypto as Jobs (the Endpoint sets it)
        self._heap = TimerHeap()
        self._used = KeyIdMemory()
        self._init_sessions()
        self.peers: dict[str, PeerConfig] = {}
        self._by_sae: dict[str, str] = {}
        self.tunnels: dict[str, Tunnel] = {}
        self._initiating: dict[str, set[str]] = {}  # peer -> tunnels with our exchange running
        self._queue: dict[str, deque[str]] = {}  # peer -> tunnels due but over the limit
        self._unacked: dict[str, set[str]] = {}  # peer -> tunnels awaiting an acknowledgement
        self._ephemerals: dict[str, Ephemerals] = {}  # peer -> its rekeys' shared ephemerals
        self._order: dict[str, list[str]] = {}  # peer -> tunnel names, for round-robin checks
        self._digests: dict[str, bytes] = {}
        self.draining = False  # a clean stop began (see drain)
        validate_peers(sae_id, peers)
        self._apply_config(peers, 0.0, Output.empty())

    # -- inputs ------------------------------------------------------------------------------
    def handle(self, event: Event, now: float) -> Output:
        out = Output.empty()
        t = self.tunnels.get(event.tunnel)
        if t is not None:
            t.on_event(event, now, self._sink(out, t.peer, now))
            self._touch(t, now, out)
        elif isinstance(event, KeysTaken | KeysFetched) and event.keys:
            # The tunnel was removed while its keys were on their way.
            out.actions.append(KeysDiscarded(event.tunnel, event.epoch, event.kms,
                                             len(event.keys), "removed",
                                             isinstance(event, KeysTaken)))
        return out

    def drain(self, now: float) -> Output:
        """A clean stop begins: no exchange starts from now on (those in flight, ours and the
        peers', run on), and every peer is told (RekeyAbort SHUTDOWN), so it starts none towards
        us either and reports what the session's end still cuts short as ``peer_shutdown``.
        Endpoint.drain waits until :meth:`exchanges_running` is 0 or ``timers.shutdown_drain``
        has passed, then the daemon closes; what is cut short here is reported ``shutdown``."""
        out = Output.empty()
        self.draining = True
        self._send_stop_notices(now, out)
        return out

    def exchanges_running(self) -> int:
        return sum(1 for t in self.tunnels.values() if t.pending is not None)

    def shutdown(self, now: float) -> Output:
        """The daemon stops: every QKD key a tunnel still holds (spares kept for the next
        attempt, an unfinished exchange's) is reported as discarded, reason ``shutdown``."""
        out = Output.empty()
        for t in self.tunnels.values():
            t.drop_keys("shutdown", self._sink(out, t.peer, now))
        return out

    def tick(self, now: float) -> Output:
        out = Output.empty()
        for item in self._heap.pop_due(now):
            if isinstance(item, Conn):
                if item.conn in self._conns:
                    self._conn_tick(item, now, out)
            elif isinstance(item, Tunnel) and self.tunnels.get(item.name) is item:
                item.tick(now, self._sink(out, item.peer, now))
                self._touch(item, now, out)
        return out

    def rekey_now(self, tunnel: str, now: float) -> Output:
        """Start a rekey of ``tunnel`` at once (``qkd-gateway rekey``). A rekey already running
        counts; ValueError says why it cannot start (unknown tunnel, no session with the peer,
        policies differing between the ends)."""
        t = self.tunnels.get(tunnel)
        if t is None:
            raise ValueError(f"no tunnel {tunnel!r}; configured: {sorted(self.tunnels)[:20]}")
        if t.enabled_at is None:
            raise ValueError(f"tunnel {tunnel!r}: no session with peer {t.peer!r}, or the two "
                             "ends configure it differently; it rekeys as soon as both hold")
        if self._halted(t.peer):
            raise ValueError(f"tunnel {tunnel!r}: this daemon or peer {t.peer!r} is stopping")
        out = Output.empty()
        if t.pending is None:
            t.retry_at, t.waiting = now, False
            t.tick(now, self._sink(out, t.peer, now))
            self._touch(t, now, out)
        return out

    def reconfigure(self, peers: Mapping[str, PeerConfig], now: float) -> Output:
        """Live reload: apply only the difference. Unchanged tunnels keep epoch, keys and timers;
        added ones come up; removed ones retire their keys; a changed one is re-announced to
        the peer (an in-session PolicyUpdate) and rekeyed once both ends agree. A peer whose
        SAE ID or keys changed gets a new session. Raises PolicyError (and changes nothing)
        when the new configuration is inconsistent."""
        validate_peers(self.sae_id, peers)
        out = Output.empty()
        self._apply_config(peers, now, out)
        return out

    # -- state store, timers, status ---------------------------------------------------------
    def restore_epoch(self, tunnel: str, epoch: int, *, age: float | None = None,
                      now: float | None = None) -> None:
        """After a restart: the last epoch this tunnel activated (from the daemon's state
        store). New exchanges continue above it. With ``age`` (seconds since that activation,
        younger than reject_after) and ``now``, the core also takes that epoch as active, so
        the next rekey follows the schedule instead of starting at once (no key wasted per
        restart); its key check is unknown, the peer's epoch is compared instead. It restores
        no keys: those stay the daemon's (which must have checked the data plane holds them)."""
        t = self.tunnels[tunnel]
        t.highest = max(t.highest, epoch)
        t.last_attempt = max(t.last_attempt, epoch)
        if age is not None and now is not None and epoch and 0 <= age < t.timers.reject_after:
            t.active_epoch, t.active_at, t.active_check = epoch, now - age, None
            self._heap.schedule(t, t.wakeup())

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
        self._heap.schedule(t, t.wakeup())

    def tunnel_status(self, tunnel: str) -> TunnelStatus:
        """Raises KeyError for a tunnel this node does not have."""
        t = self.tunnels[tunnel]
        return TunnelStatus(t.name, t.peer, t.policy.mode.label, t.enabled_at is not None,
                            t.active_epoch, t.active_at, t.expired, t.completed,
                            t.pending.epoch if t.pending else None, t.diverged)

    def next_deadline(self) -> float | None:
        """Earliest time ``tick`` has something to do (O(1) amortised: a heap)."""
        return self._heap.next()

    def export_used_key_ids(self) -> dict[str, dict[str, list[str]]]:
        """{peer: {kms: [QKD key IDs used, oldest first]}} for the daemon's state store."""
        return self._used.export()

    def restore_used_key_ids(self, data: Mapping[str, Mapping[str, Sequence[str]]]) -> int:
        """Merge a saved export after a restart; returns how many IDs were taken."""
        return self._used.restore(data)

    @property
    def used_key_ids_generation(self) -> int:
        """Changes whenever a key ID is recorded: save the export when it moved."""
        return self._used.generation

    # -- hooks of the session layer ----------------------------------------------------------
    def _peer_info(self, peer: str) -> tuple[str, PeerInfo]:
        pc = self.peers.get(peer)
        if pc is None:
            raise ValueError(f"unknown peer {peer!r}; configured: {sorted(self.peers)}")
        return pc.sae_id, PeerInfo(pc.keys, len(pc.tunnels), self._digests[peer])

    def _lookup(self, sae: str) -> PeerInfo | None:
        name = self._by_sae.get(sae)
        return None if name is None else self._peer_info(name)[1]

    def _by_sae_name(self, sae: str) -> str | None:
        return self._by_sae.get(sae)

    def _local_policies(self, peer: str) -> dict[str, TunnelPolicy]:
        return {p.name: p for p in self.peers[peer].tunnels}

    def _inner(self, peer: str, msg: InnerMessage, now: float, out: Output) -> None:
        sink = self._sink(out, peer, now)
        if isinstance(msg, Keepalive):
            for e in msg.entries:
                t = self.tunnels.get(e.tunnel)
                if t is not None and t.peer == peer:
                    t.on_key_check(e, now, sink)
                    self._touch(t, now, out)
            return
        assert not isinstance(msg, PolicyUpdate)
        t = self.tunnels.get(msg.tunnel)
        if t is None or t.peer != peer:
            # Another peer's tunnel name, or none: answer without touching any state.
            if not isinstance(msg, RekeyAbort):
                sink.send(RekeyAbort(msg.tunnel, msg.epoch, AbortCode.UNKNOWN_TUNNEL, 0))
            return
        t.on_message(msg, now, sink)
        self._touch(t, now, out)

    def _view_changed(self, peer: str, names: set[str], now: float, out: Output) -> None:
        """The peer's list (or ours) changed for ``names``: enable, disable or leave each."""
        view = self._view(peer)
        if view is None or not view.complete:
            return
        sink = self._sink(out, peer, now)
        answer: list[KeyCheck] = []
        for name in sorted(names):
            t = self.tunnels.get(name)
            if t is None or t.peer != peer:
                if name in view.policies:
                    out.actions.append(Alarm("policy_mismatch", peer, name,
                                             "not configured locally"))
                continue
            why = mismatch(t.policy, view.policies.get(name))
            if why is not None:
                if t.enabled_at is not None:
                    t.session_down(now, sink)
                out.actions.append(Alarm("policy_mismatch", peer, name, why))
            elif t.enabled_at is None:
                t.session_up(now)
                if t.unacked is not None:
                    answer.append(t.key_check(CHECK_ANSWER))
                if t.policy_changed:
                    t.policy_changed = False
                    t.rekey_soon(now)  # the peer holds the new policy too: rekey under it
                t.tick(now, sink)
            self._touch(t, now, out)
        self._send_checks(peer, answer, now, out)

    def _session_gone(self, peer: str, now: float, out: Output, peer_stopped: bool) -> None:
        sink = self._sink(out, peer, now)
        why = "shutdown" if self.draining else "peer_shutdown" if peer_stopped else None
        for name in self._order.get(peer, ()):
            t = self.tunnels[name]
            if t.enabled_at is not None or t.pending is not None:
                p = t.pending
                if why is not None and p is not None and not (p.initiator and p.stage == "gather"):
                    t.discard(p, why, sink)  # a clean stop cut it short, not a lost session
                t.session_down(now, sink)
                self._touch(t, now, out)

    def _key_checks(self, peer: str, c: Conn) -> list[KeyCheck]:
        """Unacknowledged activations first, then a round-robin over the peer's tunnels."""
        checks = [self.tunnels[n].key_check(CHECK_ANSWER)
                  for n in sorted(self._unacked.get(peer, ()))][:KEYCHECK_MAX_ENTRIES]
        order = self._order.get(peer, [])
        for _ in range(len(order)):
            if len(checks) >= KEYCHECK_MAX_ENTRIES:
                break
            c.cursor = (c.cursor + 1) % len(order)
            t = self.tunnels[order[c.cursor]]
            if t.enabled_at is not None and t.unacked is None:
                checks.append(t.key_check())
        return checks

    # -- internals ---------------------------------------------------------------------------
    def _view(self, peer: str) -> PolicyView | None:
        conn = self._session.get(peer)
        c = self._conns.get(conn) if conn is not None else None
        return c.view if c is not None else None

    def _halted(self, peer: str) -> bool:
        """No exchange starts towards ``peer`` while this node or the peer is stopping, or
        while a handshake is under way whose session will replace the current one."""
        return self.draining or self.peer_stopping(peer) or self._superseded_soon(peer)

    def _handshake_gone(self, peer: str, now: float, out: Output) -> None:
        self._start_queued(peer, now, out)  # a start it held back may go now

    def _sink(self, out: Output, peer: str, now: float) -> Sink:
        return _PeerSink(self, out, peer, now)

    def _touch(self, t: Tunnel, now: float, out: Output) -> None:
        """After any change to ``t``: its deadline, the peer's exchange slots and its queue."""
        self._heap.schedule(t, t.wakeup())
        peer, name = t.peer, t.name
        running = self._initiating[peer]
        if t.pending is not None and t.pending.initiator:
            running.add(name)
        elif name in running:
            running.discard(name)
        if t.unacked is not None:
            self._unacked[peer].add(name)
        elif name in self._unacked[peer]:
            self._unacked[peer].discard(name)
        if t.waiting and not t.queued:
            t.queued = True
            self._queue[peer].append(name)
        self._start_queued(peer, now, out)

    def _start_queued(self, peer: str, now: float, out: Output) -> None:
        queue, running = self._queue.get(peer), self._initiating.get(peer, set())
        while queue and len(running) < MAX_CONCURRENT_EXCHANGES and not self._halted(peer):
            nxt = self.tunnels.get(queue.popleft())
            if nxt is None:
                continue
            nxt.queued = False
            if not nxt.waiting or nxt.enabled_at is None or nxt.pending:
                continue
            if nxt.stand_by(now):  # late: the backup steps in about now
                self._heap.schedule(nxt, nxt.wakeup())
                continue
            nxt.start(now, self._sink(out, nxt.peer, now))
            self._heap.schedule(nxt, nxt.wakeup())
            if nxt.pending is not None and nxt.pending.initiator:
                running.add(nxt.name)

    def _apply_config(self, peers: Mapping[str, PeerConfig], now: float, out: Output) -> None:
        apply_config(self, peers, now, out)

