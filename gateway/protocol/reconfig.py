"""Applying a (new) configuration to a node: the difference only (live reload, issue 10).

Unchanged tunnels keep their object: epoch, keys, timers and any exchange in flight are
untouched. A tunnel whose policy changed keeps its active key (until it is replaced or expires)
but is disabled until the peer's announced policy matches the new one; it is then rekeyed. A
removed tunnel retires every epoch it may have installed. The peer learns of every change in
the session through a PolicyUpdate (see sync.py); a handshake still in progress for a changed
peer is restarted when it completes, since the digest it signed is outdated. A peer whose SAE ID
or public keys changed loses its connections (a new handshake authenticates the new keys).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.identity import PeerPublicKeys
from gateway.protocol.constants import DEFAULT_PORT
from gateway.protocol.errors import PolicyError
from gateway.protocol.events import Output
from gateway.protocol.policy import TunnelPolicy, policy_digest
from gateway.protocol.rekey import Tunnel

if TYPE_CHECKING:
    from gateway.protocol.machine import Node

__all__ = ["PeerAddress", "PeerConfig", "apply_config", "validate_peers"]


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where to dial a peer (and, resolved, the source address its reserved slots are for)."""

    peer: str
    host: str
    port: int = DEFAULT_PORT


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A pinned peer: its SAE ID, public keys, and the tunnels configured towards it."""

    sae_id: str
    keys: PeerPublicKeys
    tunnels: tuple[TunnelPolicy, ...] = ()


def apply_config(node: Node, peers: Mapping[str, PeerConfig], now: float, out: Output) -> None:
    old_peers, new_peers = node.peers, dict(peers)
    # Same SAE ID: the tunnels (roles, epochs, keys) carry over. Same keys too: the session.
    same = {n for n, pc in new_peers.items() if n in old_peers and old_peers[n].sae_id == pc.sae_id}
    for c in list(node._conns.values()):
        if c.peer is not None and c.peer in old_peers and (
                c.peer not in same or old_peers[c.peer].keys != new_peers[c.peer].keys):
            node._drop(c, "peer_reconfigured", out, now)
    changes: dict[str, tuple[list[TunnelPolicy], list[str]]] = {n: ([], []) for n in new_peers}
    tunnels: dict[str, Tunnel] = {}
    for peer, pc in new_peers.items():
        for pol in pc.tunnels:
            t = node.tunnels.get(pol.name)
            if t is not None and t.peer == peer and peer in same:
                if t.policy != pol:
                    if t.enabled_at is not None or t.pending is not None:
                        t.session_down(now, node._sink(out, peer, now))
                    t.policy, t.policy_changed = pol, True
                    changes[peer][0].append(pol)
                tunnels[pol.name] = t
                continue
            tunnels[pol.name] = Tunnel(pol, peer, node.sae_id, pc.sae_id, node.timers, node._rng,
                                       node._used.view(peer))
            changes[peer][0].append(pol)
    for name, t in node.tunnels.items():
        if tunnels.get(name) is not t:
            t.retire_everything(node._sink(out, t.peer, now))
            node._heap.cancel(t)
            node._initiating.get(t.peer, set()).discard(name)
            node._unacked.get(t.peer, set()).discard(name)
            if t.peer in same:
                changes[t.peer][1].append(name)
    node.peers, node.tunnels = new_peers, tunnels
    node._by_sae = {pc.sae_id: n for n, pc in new_peers.items()}
    node._digests = {n: policy_digest(pc.tunnels) for n, pc in new_peers.items()}
    node._order = {n: [p.name for p in pc.tunnels] for n, pc in new_peers.items()}
    pairs: dict[tuple[str, str], int] = {}
    for n, pc in new_peers.items():
        for pol in pc.tunnels:
            for kms in pol.kms:
                pairs[(n, kms)] = pairs.get((n, kms), 0) + 1
    node._used.configure(pairs)
    for name in [n for n in node._initiating if n not in new_peers]:
        for table in (node._initiating, node._queue, node._unacked, node._ephemerals):
            table.pop(name, None)
    for name in new_peers:
        node._initiating.setdefault(name, set())
        node._unacked.setdefault(name, set())
        node._queue.setdefault(name, deque())
    for peer, (upserts, removals) in changes.items():
        if not upserts and not removals:
            continue
        conn = node._session.get(peer)
        session = node._conns.get(conn) if conn is not None else None
        if session is not None and session.view is not None:
            node._send_update(session, upserts, removals, now, out)
            node._view_changed(peer, {p.name for p in upserts} | set(removals), now, out)
    for t in tunnels.values():
        node._heap.schedule(t, t.wakeup())


def validate_peers(sae_id: str, peers: Mapping[str, PeerConfig]) -> None:
    """What :meth:`Node.reconfigure` refuses (PolicyError), checked without changing anything:
    a live reload checks first, then prepares the added tunnels, then reconfigures."""
    saes = {p.sae_id for p in peers.values()}
    if len(saes) != len(peers) or sae_id in saes:
        raise PolicyError("every peer needs its own SAE ID, different from this site's")
    seen: set[str] = set()
    for p in peers.values():
        for pol in p.tunnels:
            if pol.name in seen:
                raise PolicyError(f"tunnel name {pol.name!r} is used twice; names must be "
                                  "unique on a site")
            seen.add(pol.name)
