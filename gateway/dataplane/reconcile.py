"""Drift detection: compare the wanted spec with the state read from an interface and plan the
smallest set of changes. Pure (no I/O) so both backends share it and unit tests cover it alone.

Policy (the daemon owns the PSK): a plan never contains a PSK. ``apply()`` leaves every PSK slot
as it finds it; a peer that ``apply()`` creates starts with an empty slot until ``set_psk``.
Adopt mode plans nothing: the interface belongs to another tool, only PSK slots are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.dataplane.errors import PeerNotFound, SpecError
from gateway.dataplane.types import (
    KEY_LEN,
    DeviceState,
    WgInterfaceSpec,
    WgPeerSpec,
    normalize_cidr,
    normalize_endpoint,
    normalize_interface_address,
    validate_ifname,
    validate_public_key,
)
from gateway.keymaterial import Secret

__all__ = [
    "DevicePlan",
    "PeerChange",
    "normalize_spec",
    "peer_not_found",
    "plan_addresses",
    "plan_device",
    "require_peers",
]


@dataclass(frozen=True, slots=True)
class PeerChange:
    """What to write for one peer. ``create``: the peer is new (write every field)."""

    spec: WgPeerSpec
    create: bool = False
    endpoint: bool = False
    allowed_ips: bool = False
    keepalive: bool = False


@dataclass(frozen=True, slots=True)
class DevicePlan:
    private_key: Secret | None = None
    listen_port: int | None = None
    remove_peers: tuple[str, ...] = ()
    peer_changes: tuple[PeerChange, ...] = ()
    corrections: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return (
            self.private_key is None
            and self.listen_port is None
            and not self.remove_peers
            and not self.peer_changes
        )


#: The last specs normalised: id -> (spec, its canonical form). The daemon re-applies the same
#: spec object at every reconciliation pass; parsing its peers' keys and allowed IPs again was
#: a third of a pass at 10,000 peers. A strong reference to the spec keeps its id from being
#: reused while it is here. A spec already canonical maps to itself (no copy kept).
_NORMALIZED: dict[int, tuple[WgInterfaceSpec, WgInterfaceSpec]] = {}
_NORMALIZED_MAX = 64


def normalize_spec(spec: WgInterfaceSpec) -> WgInterfaceSpec:
    """Validate every field and return the canonical spec; raise SpecError before any I/O."""
    hit = _NORMALIZED.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    out = _normalize(spec)
    if out == spec:
        out = spec
    while len(_NORMALIZED) >= _NORMALIZED_MAX:
        del _NORMALIZED[next(iter(_NORMALIZED))]
    _NORMALIZED[id(spec)] = (spec, out)
    _NORMALIZED[id(out)] = (out, out)
    return out


def _normalize(spec: WgInterfaceSpec) -> WgInterfaceSpec:
    validate_ifname(spec.name)
    if spec.private_key is None and not spec.adopt:
        raise SpecError(f"{spec.name}: private_key is required unless adopt=True")
    if spec.private_key is not None and len(spec.private_key) != KEY_LEN:
        raise SpecError(f"{spec.name}: private key must be {KEY_LEN} bytes")
    if spec.listen_port is not None and not 0 < spec.listen_port < 65536:
        raise SpecError(f"{spec.name}: listen_port {spec.listen_port} is not in 1-65535")
    peers: list[WgPeerSpec] = []
    seen: set[str] = set()
    for peer in spec.peers:
        pub = validate_public_key(peer.public_key)
        if pub in seen:
            raise SpecError(f"{spec.name}: peer {pub} is listed twice")
        seen.add(pub)
        keepalive = peer.persistent_keepalive or None
        if keepalive is not None and not 0 < keepalive < 65536:
            raise SpecError(f"{spec.name}: peer {pub}: persistent_keepalive must be 1-65535 s")
        peers.append(
            WgPeerSpec(
                public_key=pub,
                endpoint=normalize_endpoint(peer.endpoint) if peer.endpoint else None,
                allowed_ips=tuple(sorted({normalize_cidr(c) for c in peer.allowed_ips})),
                persistent_keepalive=keepalive,
            )
        )
    addresses = tuple(sorted({normalize_interface_address(a) for a in spec.addresses}))
    return replace(spec, peers=tuple(peers), addresses=addresses)


def plan_device(spec: WgInterfaceSpec, state: DeviceState | None) -> DevicePlan:
    """Changes that make ``state`` match the (normalised) ``spec``. ``state=None``: new device."""
    if spec.adopt:
        return DevicePlan()
    if state is None:
        return DevicePlan(
            private_key=spec.private_key,
            listen_port=spec.listen_port,
            peer_changes=tuple(PeerChange(spec=p, create=True) for p in spec.peers),
        )
    name = spec.name
    corrections: list[str] = []
    private_key = None
    if spec.private_key is not None and state.private_key != spec.private_key:
        private_key = spec.private_key
        corrections.append(f"{name}: private key differed; restored")
    listen_port = None
    if spec.listen_port is not None and state.listen_port != spec.listen_port:
        listen_port = spec.listen_port
        corrections.append(f"{name}: listen_port {state.listen_port} -> {spec.listen_port}")
    wanted = {p.public_key: p for p in spec.peers}
    remove = tuple(sorted(set(state.peers) - set(wanted)))
    corrections.extend(f"{name}: removed unexpected peer {pub}" for pub in remove)
    changes: list[PeerChange] = []
    for pub, peer in wanted.items():
        have = state.peers.get(pub)
        if have is None:
            changes.append(PeerChange(spec=peer, create=True))
            corrections.append(f"{name}: peer {pub} was missing; re-added (PSK slot empty)")
            continue
        endpoint = peer.endpoint is not None and have.endpoint != peer.endpoint
        if endpoint:
            corrections.append(f"{name}: peer {pub} endpoint {have.endpoint} -> {peer.endpoint}")
        allowed = have.allowed_ips != frozenset(peer.allowed_ips)
        if allowed:
            corrections.append(
                f"{name}: peer {pub} allowed_ips {sorted(have.allowed_ips)}"
                f" -> {list(peer.allowed_ips)}"
            )
        keepalive = (have.persistent_keepalive or None) != peer.persistent_keepalive
        if keepalive:
            corrections.append(
                f"{name}: peer {pub} persistent_keepalive {have.persistent_keepalive or 0}"
                f" -> {peer.persistent_keepalive or 0}"
            )
        if endpoint or allowed or keepalive:
            changes.append(
                PeerChange(spec=peer, endpoint=endpoint, allowed_ips=allowed, keepalive=keepalive)
            )
    return DevicePlan(
        private_key=private_key,
        listen_port=listen_port,
        remove_peers=remove,
        peer_changes=tuple(changes),
        corrections=tuple(corrections),
    )


def plan_addresses(
    name: str, wanted: tuple[str, ...], have: set[str]
) -> tuple[list[str], list[str], list[str]]:
    """(to add, to remove, corrections) for interface addresses, both as ``ip/prefix`` text."""
    want = set(wanted)
    add = sorted(want - have)
    drop = sorted(have - want)
    corrections = [f"{name}: address {a} was missing; added" for a in add]
    corrections += [f"{name}: unexpected address {a}; removed" for a in drop]
    return add, drop, corrections


def require_peers(ifname: str, state: DeviceState, peers: list[str]) -> None:
    """Raise PeerNotFound for the first of ``peers`` not configured in ``state``."""
    for pub in peers:
        if pub not in state.peers:
            raise peer_not_found(ifname, pub)


def peer_not_found(ifname: str, pub: str) -> PeerNotFound:
    return PeerNotFound(
        f"{ifname}: peer {pub} is not configured on the interface"
        " (in adopt mode add it with `wg set` or your network manager)"
    )
