"""Plain data the data plane takes and returns, and the backend interface.

The data plane knows nothing of the gateway's config models or peer protocol: the daemon
translates its config into these dataclasses. Public keys are base64 strings here (as in `wg` and
netlink); the UAPI backend converts to hex on the wire. Private keys and PSKs are always
:class:`~gateway.keymaterial.Secret`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from gateway.dataplane.errors import SpecError
from gateway.keymaterial import Secret

__all__ = [
    "KEY_LEN",
    "BackendPreference",
    "DeviceState",
    "PeerState",
    "PeerStatus",
    "WgInterfaceSpec",
    "WgPeerSpec",
    "WireGuardBackend",
    "b64_to_hex",
    "hex_to_b64",
    "normalize_cidr",
    "normalize_endpoint",
    "validate_public_key",
]

KEY_LEN = 32  # Curve25519 keys and WireGuard PSKs are 32 bytes
# Linux IFNAMSIZ is 16 including the NUL; wireguard-go also uses the name for its socket file.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

# "record" is the benchmarks' in-memory backend (gateway.dataplane.record), refused elsewhere.
BackendPreference = Literal["auto", "kernel", "userspace", "record"]


@dataclass(frozen=True, slots=True)
class WgPeerSpec:
    """A peer as the daemon wants it. ``endpoint`` is ``IP:port`` / ``[IPv6]:port`` or None
    (a responder that learns the endpoint from the first handshake)."""

    public_key: str
    endpoint: str | None = None
    allowed_ips: tuple[str, ...] = ()
    persistent_keepalive: int | None = None


@dataclass(frozen=True, slots=True)
class WgInterfaceSpec:
    """An interface as the daemon wants it.

    ``adopt=True``: the interface belongs to someone else (wg-quick, networkd); only PSK slots
    are touched and ``private_key`` may be None. ``listen_port=None`` keeps whatever port the
    interface has (a random one when created)."""

    name: str
    private_key: Secret | None
    listen_port: int | None = None
    addresses: tuple[str, ...] = ()
    peers: tuple[WgPeerSpec, ...] = ()
    adopt: bool = False
    # Keep the link down (a tunnel failing closed when no key could be written): the interface
    # and its peers are still created/restored, so the tunnel can recover, but carry nothing.
    down: bool = False


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Live peer counters. ``last_handshake`` is a Unix time, None before the first handshake."""

    public_key: str
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    endpoint: str | None


@dataclass(frozen=True, slots=True)
class PeerState:
    """A peer as read from the interface (normalised), for reconciliation."""

    public_key: str
    preshared_key: Secret | None
    endpoint: str | None
    allowed_ips: frozenset[str]
    persistent_keepalive: int | None
    status: PeerStatus


@dataclass(frozen=True, slots=True)
class DeviceState:
    """An interface as read from the backend."""

    private_key: Secret | None
    listen_port: int
    peers: dict[str, PeerState]


@runtime_checkable
class WireGuardBackend(Protocol):
    """What the daemon calls. Implementations: kernel (netlink) and userspace (UAPI socket)."""

    kind: str

    async def apply(self, spec: WgInterfaceSpec) -> list[str]:
        """Create (or adopt) the interface and correct any drift; return the corrections made."""
        ...

    async def set_psk(self, ifname: str, peer_public_key: str, psk: Secret) -> None:
        """Install ``psk`` for the peer, then read it back; raise PskNotApplied on mismatch."""
        ...

    async def get_psk(self, ifname: str, peer_public_key: str) -> Secret | None:
        """The peer's current PSK, None when the slot is empty."""
        ...

    async def psks(self, ifname: str) -> dict[str, Secret | None]:
        """Every peer's PSK (public key -> PSK, None for an empty slot) from one read of the
        interface: the reconciliation pass checks all of a hub's slots with it."""
        ...

    async def force_handshake(self, ifname: str, peer_public_key: str) -> None:
        """Make the next packet to the peer start a new handshake (under the current PSK)."""
        ...

    async def peer_status(self, ifname: str) -> list[PeerStatus]:
        """Handshake time, counters and endpoint of every peer."""
        ...

    async def remove(self, ifname: str) -> None:
        """Delete the interface (idempotent)."""
        ...

    async def set_blocked(self, ifname: str, blocked: bool) -> None:
        """Last resort of failing closed when no key can be written: take the interface down so
        that no traffic passes (also an adopted one); ``blocked=False`` brings it back up.
        Idempotent; a missing interface is fine (it carries no traffic)."""
        ...


def validate_ifname(name: str) -> str:
    if not _IFNAME_RE.fullmatch(name):
        raise SpecError(
            f"interface name {name!r} is invalid: use 1-15 characters from [A-Za-z0-9_.-]"
        )
    return name


def validate_public_key(key: str) -> str:
    """Return the canonical base64 form of a 32-byte public key, or raise SpecError."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(f"public key {key!r} is not base64 (expected `wg pubkey` output)") from None
    if len(raw) != KEY_LEN:
        raise SpecError(f"public key {key!r} decodes to {len(raw)} bytes, expected {KEY_LEN}")
    return base64.b64encode(raw).decode()


def b64_to_hex(key: str) -> str:
    return base64.b64decode(validate_public_key(key)).hex()


def hex_to_b64(key_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(key_hex)).decode()


def normalize_cidr(cidr: str) -> str:
    """Canonical network text (host bits cleared): allowed IPs are compared as sets of these."""
    try:
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        raise SpecError(f"{cidr!r} is not a CIDR (e.g. 10.0.0.2/32 or fd00::/64)") from None


def normalize_interface_address(cidr: str) -> str:
    """Canonical interface address text (host bits kept), e.g. ``10.0.0.1/24``."""
    try:
        return str(ipaddress.ip_interface(cidr))
    except ValueError:
        raise SpecError(f"address {cidr!r} is not IP/prefix (e.g. 10.0.0.1/24)") from None


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``IP:port`` / ``[IPv6]:port`` -> (ip, port). Hostnames are refused: resolve them before
    building the spec, so that a DNS failure is reported where it happens."""
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host:
        raise SpecError(f"endpoint {endpoint!r} is not IP:port (e.g. 192.0.2.1:51820)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise SpecError(
            f"endpoint {endpoint!r} is not IP:port (e.g. 192.0.2.1:51820 or [2001:db8::1]:51820);"
            " resolve host names before building the spec"
        ) from None
    if not 0 < port < 65536:
        raise SpecError(f"endpoint {endpoint!r}: port must be 1-65535")
    return str(ip), port


def normalize_endpoint(endpoint: str) -> str:
    ip, port = split_endpoint(endpoint)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
