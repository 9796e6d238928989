"""Translation between our types and pyroute2's WireGuard generic netlink messages (pure).

Keys are base64 on netlink. A device dump may span several messages when there are many peers or
allowed IPs; a peer continued in the next message repeats its public key, so peers are merged.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from gateway.dataplane.reconcile import PeerChange
from gateway.dataplane.types import (
    DeviceState,
    PeerState,
    PeerStatus,
    normalize_cidr,
    normalize_endpoint,
    split_endpoint,
)
from gateway.keymaterial import Secret

__all__ = ["parse_device", "peer_request", "recreate_peer_attrs"]

_ZERO = bytes(32)


def _key(value: Any) -> Secret | None:
    if value is None:
        return None
    raw = base64.b64decode(value)
    return None if raw == _ZERO else Secret(raw)


def _b64(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_device(msgs: Iterable[Any]) -> DeviceState:
    """Build a DeviceState from the messages of a WG_CMD_GET_DEVICE dump."""
    private_key: Secret | None = None
    listen_port = 0
    peers: dict[str, dict[str, Any]] = {}
    for msg in msgs:
        if msg.get_attr("WGDEVICE_A_PRIVATE_KEY") is not None:
            private_key = _key(msg.get_attr("WGDEVICE_A_PRIVATE_KEY"))
        listen_port = int(msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port)
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or []:
            pub = _b64(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            entry = peers.setdefault(pub, {"allowed": set()})
            entry["allowed"].update(
                normalize_cidr(a["addr"]) for a in peer.get_attr("WGPEER_A_ALLOWEDIPS") or []
            )
            for attr in (
                "WGPEER_A_PRESHARED_KEY",
                "WGPEER_A_ENDPOINT",
                "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL",
                "WGPEER_A_LAST_HANDSHAKE_TIME",
                "WGPEER_A_RX_BYTES",
                "WGPEER_A_TX_BYTES",
            ):
                value = peer.get_attr(attr)
                if value is not None:
                    entry[attr] = value
    return DeviceState(
        private_key=private_key,
        listen_port=listen_port,
        peers={pub: _peer_state(pub, entry) for pub, entry in peers.items()},
    )


def _peer_state(pub: str, entry: dict[str, Any]) -> PeerState:
    endpoint = None
    ep = entry.get("WGPEER_A_ENDPOINT")
    if ep is not None and ep.get("addr") and ep.get("port"):
        endpoint = normalize_endpoint(f"[{ep['addr']}]:{ep['port']}")
    last = None
    hs = entry.get("WGPEER_A_LAST_HANDSHAKE_TIME")
    if hs is not None and hs["tv_sec"]:
        last = hs["tv_sec"] + hs["tv_nsec"] / 1e9
    return PeerState(
        public_key=pub,
        preshared_key=_key(entry.get("WGPEER_A_PRESHARED_KEY")),
        endpoint=endpoint,
        allowed_ips=frozenset(entry["allowed"]),
        persistent_keepalive=int(entry.get("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0) or None,
        status=PeerStatus(
            public_key=pub,
            last_handshake=last,
            rx_bytes=int(entry.get("WGPEER_A_RX_BYTES") or 0),
            tx_bytes=int(entry.get("WGPEER_A_TX_BYTES") or 0),
            endpoint=endpoint,
        ),
    )


def peer_request(change: PeerChange) -> dict[str, Any]:
    """The ``peer=`` argument of AsyncWireGuard.set() for one planned change (never a PSK)."""
    spec = change.spec
    req: dict[str, Any] = {"public_key": spec.public_key}
    if not change.create:
        req["update_only"] = True
    if (change.create or change.endpoint) and spec.endpoint:
        req["endpoint_addr"], req["endpoint_port"] = split_endpoint(spec.endpoint)
    if change.create or change.keepalive:
        req["persistent_keepalive"] = spec.persistent_keepalive or 0
    if change.create or change.allowed_ips:
        req["replace_allowed_ips"] = True
        req["allowed_ips"] = list(spec.allowed_ips)
    return req


def _peer_attrs(sock: Any, request: dict[str, Any]) -> list[Any]:
    from pyroute2.netlink.generic.wireguard import wgmsg

    scratch = wgmsg()
    sock._wg_set_peer(scratch, request)  # pyroute2's own encoder for one peer
    peers: list[Any] = scratch["attrs"][0][1]
    return peers


def recreate_peer_attrs(sock: Any, peer: PeerState) -> list[Any]:
    """WGDEVICE_A_PEERS value that removes the peer and adds it back with the same PSK, endpoint,
    allowed IPs and keepalive (sessions dropped: the next packet starts a handshake)."""
    add: dict[str, Any] = {
        "public_key": peer.public_key,
        "persistent_keepalive": peer.persistent_keepalive or 0,
        "allowed_ips": sorted(peer.allowed_ips),
    }
    if peer.preshared_key is not None:
        add["preshared_key"] = base64.b64encode(peer.preshared_key.reveal()).decode()
    if peer.endpoint:
        add["endpoint_addr"], add["endpoint_port"] = split_endpoint(peer.endpoint)
    remove = {"public_key": peer.public_key, "remove": True}
    return _peer_attrs(sock, remove) + _peer_attrs(sock, add)
