"""Translation between our types and pyroute2's WireGuard generic netlink messages (pure).

Keys are base64 on netlink. A device dump may span several messages when there are many peers or
allowed IPs; a peer continued in the next message repeats its public key, so peers are merged.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from collections.abc import Iterable, Iterator
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
_U32 = struct.Struct("=I")


# include/uapi/linux/wireguard.h: attribute numbers of a WG_CMD_GET_DEVICE answer.
_DEV_PRIVATE_KEY, _DEV_LISTEN_PORT, _DEV_PEERS = 3, 6, 8
_PEER_PUBLIC_KEY, _PEER_PSK, _PEER_ENDPOINT, _PEER_KEEPALIVE = 1, 2, 4, 5
_PEER_HANDSHAKE, _PEER_RX, _PEER_TX, _PEER_ALLOWEDIPS = 6, 7, 8, 9
_AIP_ADDR, _AIP_CIDR = 2, 3
_GENL_HEADER = 4  # cmd, version, reserved (u16) after the 16-byte netlink header
_NLA = struct.Struct("=HH")
_NLA_TYPE = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_U16, _U64, _TIMESPEC = struct.Struct("=H"), struct.Struct("=Q"), struct.Struct("=qq")
_PORT = struct.Struct("!H")
_AF_INET, _AF_INET6 = 2, 10


def _attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each netlink attribute in ``buf[start:end]``."""
    off = start
    while off + 4 <= end:
        length, kind = _NLA.unpack_from(buf, off)
        if length < 4 or off + length > end:
            raise ValueError("malformed netlink attribute in a WireGuard device dump")
        yield kind & _NLA_TYPE, off + 4, off + length
        off += (length + 3) & ~3


def _fixed(st: struct.Struct, buf: bytes, start: int, end: int) -> tuple[Any, ...]:
    """The values of a fixed-size attribute payload; a short one is malformed."""
    if end - start < st.size:
        raise ValueError("a netlink attribute in a WireGuard device dump is too short")
    return st.unpack_from(buf, start)


def _key(raw: bytes) -> Secret | None:
    if len(raw) != 32:
        raise ValueError("a WireGuard key in a device dump is not 32 bytes")
    return None if raw == _ZERO else Secret(raw)


def _endpoint(raw: bytes) -> str | None:
    family = _U16.unpack_from(raw)[0] if len(raw) >= 2 else 0
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == _AF_INET and len(raw) >= 8:
        addr = ipaddress.IPv4Address(raw[4:8])
    elif family == _AF_INET6 and len(raw) >= 24:
        addr = ipaddress.IPv6Address(raw[8:24])
    else:
        return None
    port = _PORT.unpack_from(raw, 2)[0]
    return normalize_endpoint(f"[{addr}]:{port}") if port and int(addr) else None


def _allowed(buf: bytes, start: int, end: int, into: set[str]) -> None:
    for _, s, e in _attrs(buf, start, end):
        addr, cidr = b"", -1
        for kind, a, b in _attrs(buf, s, e):
            if kind == _AIP_ADDR:
                addr = buf[a:b]
            elif kind == _AIP_CIDR and b > a:
                cidr = buf[a]
        if len(addr) in (4, 16) and cidr >= 0:
            into.add(normalize_cidr(f"{ipaddress.ip_address(addr)}/{cidr}"))


def parse_device(msgs: Iterable[Any], only: str | None = None) -> DeviceState:
    """Build a DeviceState from the messages of a WG_CMD_GET_DEVICE dump (pyroute2 messages:
    only their raw bytes, ``data`` from ``offset``, are read; pyroute2's own attribute decoding
    cost ~0.15 ms per peer). ``only``: a public key; other peers are skipped unparsed (one peer
    looked up in a hub's dump)."""
    want = base64.b64decode(only) if only is not None else None
    private_key: Secret | None = None
    listen_port = 0
    peers: dict[bytes, dict[str, Any]] = {}
    data: Any = None
    buf = b""
    for msg in msgs:
        if msg.data is not data:  # the messages of one receive share its buffer (a bytearray)
            data, buf = msg.data, bytes(msg.data)
        off = msg.offset
        end = off + _fixed(_U32, buf, off, len(buf))[0]
        if end > len(buf):
            raise ValueError("a WireGuard device dump message runs past its buffer")
        for kind, s, e in _attrs(buf, off + 16 + _GENL_HEADER, end):
            if kind == _DEV_PRIVATE_KEY:
                private_key = _key(buf[s:e])
            elif kind == _DEV_LISTEN_PORT:
                listen_port = _fixed(_U16, buf, s, e)[0]
            elif kind == _DEV_PEERS:
                for _, ps, pe in _attrs(buf, s, e):
                    _read_peer(buf, ps, pe, want, peers)
    b64 = {pub: base64.b64encode(pub).decode() for pub in peers}
    return DeviceState(
        private_key=private_key,
        listen_port=listen_port,
        peers={b64[pub]: _peer_state(b64[pub], entry) for pub, entry in peers.items()},
    )


def _read_peer(buf: bytes, start: int, end: int, want: bytes | None,
               peers: dict[bytes, dict[str, Any]]) -> None:
    if want is not None and start + 8 <= end:
        # The kernel writes the public key first: another peer's is skipped at a glance.
        length, kind = _NLA.unpack_from(buf, start)
        if kind & _NLA_TYPE == _PEER_PUBLIC_KEY and length == 36 and start + 36 <= end \
                and buf[start + 4:start + 36] != want:
            return
    found = list(_attrs(buf, start, end))
    pub = next((buf[s:e] for kind, s, e in found if kind == _PEER_PUBLIC_KEY), None)
    if pub is None or (want is not None and pub != want):
        return
    if len(pub) != 32:
        raise ValueError("a WireGuard public key in a device dump is not 32 bytes")
    entry = peers.setdefault(pub, {"allowed": set()})
    for kind, s, e in found:
        if kind == _PEER_PSK:
            entry["psk"] = _key(buf[s:e])
        elif kind == _PEER_ENDPOINT:
            entry["endpoint"] = _endpoint(buf[s:e])
        elif kind == _PEER_KEEPALIVE:
            entry["keepalive"] = _fixed(_U16, buf, s, e)[0]
        elif kind == _PEER_HANDSHAKE:
            sec, nsec = _fixed(_TIMESPEC, buf, s, e)
            entry["handshake"] = sec + nsec / 1e9 if sec else None
        elif kind == _PEER_RX:
            entry["rx"] = _fixed(_U64, buf, s, e)[0]
        elif kind == _PEER_TX:
            entry["tx"] = _fixed(_U64, buf, s, e)[0]
        elif kind == _PEER_ALLOWEDIPS:
            _allowed(buf, s, e, entry["allowed"])


def _peer_state(pub: str, entry: dict[str, Any]) -> PeerState:
    endpoint = entry.get("endpoint")
    return PeerState(
        public_key=pub,
        preshared_key=entry.get("psk"),
        endpoint=endpoint,
        allowed_ips=frozenset(entry["allowed"]),
        persistent_keepalive=entry.get("keepalive") or None,
        status=PeerStatus(
            public_key=pub,
            last_handshake=entry.get("handshake"),
            rx_bytes=entry.get("rx", 0),
            tx_bytes=entry.get("tx", 0),
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
