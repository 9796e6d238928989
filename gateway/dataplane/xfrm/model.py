"""Typed views of XFRM objects: what the client writes (``SaParams``, ``PolicyParams``), what
it reads back (``SaState``, ``PolicyState``) or hears (``SaExpired``, ``SaAcquire``), and what
a tunnel reports (``EspTunnelStatus``).

Addresses are :mod:`ipaddress` objects, SPIs and reqids plain ints. Keys are
:class:`~gateway.keymaterial.Secret`, so a repr of any of these never shows key bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Literal

from gateway.dataplane.xfrm import consts as c
from gateway.keymaterial import Secret

__all__ = [
    "Address",
    "EspTunnelStatus",
    "Lifetime",
    "Mark",
    "Network",
    "PolicyParams",
    "PolicyState",
    "SaAcquire",
    "SaExpired",
    "SaParams",
    "SaState",
    "SaStatus",
    "Selector",
    "Template",
    "XfrmEvent",
    "XfrmEventsLost",
    "family_of",
    "sa_status",
    "spi_hex",
]

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def family_of(value: Address | Network) -> int:
    return c.AF_INET if value.version == 4 else c.AF_INET6


def spi_hex(spi: int) -> str:
    """SPIs as `ip xfrm state` prints them, for logs and messages."""
    return f"0x{spi:08x}"


@dataclass(frozen=True, slots=True)
class Mark:
    """XFRMA_MARK: the object applies only to packets with ``fwmark & mask == value``."""

    value: int
    mask: int = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class Selector:
    """Traffic selector (struct xfrm_selector) without ports: ``src`` -> ``dst``, any protocol."""

    src: Network
    dst: Network
    proto: int = 0

    @property
    def family(self) -> int:
        return family_of(self.src)

    @classmethod
    def any(cls, family: int) -> Selector:
        text = "0.0.0.0/0" if family == c.AF_INET else "::/0"
        return cls(ip_network(text), ip_network(text))

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}"


@dataclass(frozen=True, slots=True)
class Lifetime:
    """SA limits (struct xfrm_lifetime_cfg); None means "no limit". Seconds count from the
    SA's installation; the soft limit makes the kernel send an EXPIRE (soft) notification, the
    hard limit deletes the SA."""

    soft_seconds: int | None = None
    hard_seconds: int | None = None
    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None


@dataclass(frozen=True, slots=True)
class SaParams:
    """One tunnel-mode ESP SA with AES-GCM to install. ``src``/``dst`` are the outer addresses
    (``dst`` is the receiver: our address for an inbound SA). ``selector=None`` installs the
    family-less zero selector (XFRM_STATE_AF_UNSPEC), so one SA carries IPv4 and IPv6 inner
    traffic; the policies decide what enters the tunnel."""

    src: Address
    dst: Address
    spi: int
    reqid: int
    key: Secret
    replay_window: int = c.DEFAULT_REPLAY_WINDOW
    esn: bool = True
    lifetime: Lifetime = field(default_factory=Lifetime)
    mark: Mark | None = None
    if_id: int | None = None
    selector: Selector | None = None
    icv_bits: int = c.AEAD_ICV_BITS
    algorithm: str = c.AEAD_ALGORITHM


@dataclass(frozen=True, slots=True)
class SaState:
    """An SA as the kernel reports it. ``larval``: an SPI reserved by ALLOCSPI that has no
    algorithm yet (or a ``placeholder``); ``key`` is None for those."""

    src: Address
    dst: Address
    spi: int
    proto: int
    reqid: int
    mode: int
    flags: int
    replay_window: int
    esn: bool
    algorithm: str | None
    key: Secret | None
    icv_bits: int | None
    lifetime: Lifetime
    bytes: int
    packets: int
    add_time: int
    use_time: int
    mark: Mark | None
    if_id: int | None
    selector: Selector | None
    replay_errors: int
    integrity_failures: int

    @property
    def larval(self) -> bool:
        return self.algorithm is None

    @property
    def placeholder(self) -> bool:
        """The kernel's own acquire entry (SPI 0), created when a packet met a policy without
        SA. It holds no key, cannot be deleted by SPI, and expires by itself (30 s)."""
        return self.spi == 0


@dataclass(frozen=True, slots=True)
class Template:
    """struct xfrm_user_tmpl: "this traffic must go through an SA with these properties"."""

    src: Address | None
    dst: Address | None
    reqid: int
    proto: int = c.IPPROTO_ESP
    mode: int = c.XFRM_MODE_TUNNEL
    spi: int = 0
    optional: bool = False


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """A policy to install. The kernel identifies a policy by (direction, selector, mark,
    if_id): two policies with the same key cannot coexist."""

    selector: Selector
    direction: c.Direction
    templates: tuple[Template, ...]
    priority: int = c.DEFAULT_POLICY_PRIORITY
    action: int = c.XFRM_POLICY_ALLOW
    mark: Mark | None = None
    if_id: int | None = None

    @property
    def key(self) -> tuple[c.Direction, Selector, Mark | None, int | None]:
        return (self.direction, self.selector, self.mark, self.if_id)

    def describe(self) -> str:
        where = f" if_id {self.if_id}" if self.if_id else ""
        return f"{self.direction.name.lower()} policy {self.selector}{where}"


@dataclass(frozen=True, slots=True)
class PolicyState(PolicyParams):
    """A policy as the kernel reports it; ``index`` is the kernel's handle."""

    index: int = 0

    def params(self) -> PolicyParams:
        return PolicyParams(self.selector, self.direction, self.templates, self.priority,
                            self.action, self.mark, self.if_id)


@dataclass(frozen=True, slots=True)
class SaExpired:
    """XFRM_MSG_EXPIRE: an SA reached its soft limit (rekey now) or hard limit (it is gone).
    Larval SAs (an SPI allocated but never installed) also expire, hard, after the kernel's
    acquire timeout: EspTunnel.classify() tells which kind of SA it was. The kernel does not
    put the key into these notifications."""

    src: Address
    dst: Address
    spi: int
    reqid: int
    hard: bool
    bytes: int
    packets: int


@dataclass(frozen=True, slots=True)
class SaAcquire:
    """XFRM_MSG_ACQUIRE: a packet matched a policy for which no SA exists (the packet was
    dropped). For this gateway that means a tunnel is down or failed closed."""

    src: Address | None
    dst: Address | None
    reqid: int
    selector: Selector | None
    policy_index: int


@dataclass(frozen=True, slots=True)
class XfrmEventsLost:
    """The kernel dropped notifications (receive buffer overrun, ENOBUFS): reconcile."""

    reason: str


XfrmEvent = SaExpired | SaAcquire | XfrmEventsLost


# -- what EspTunnel.status() reports (counters and limits, no keys) ---------------------------
@dataclass(frozen=True, slots=True)
class SaStatus:
    """One SA of the tunnel. ``direction`` "in" (we receive on ``spi``) or "out".
    ``larval``: an allocated SPI not installed yet. ``add_time``: Unix time of installation."""

    spi: int
    direction: Literal["in", "out"]
    larval: bool
    bytes: int
    packets: int
    add_time: int
    lifetime: Lifetime
    replay_window: int
    esn: bool
    replay_errors: int
    integrity_failures: int

    @property
    def spi_hex(self) -> str:
        return spi_hex(self.spi)


@dataclass(frozen=True, slots=True)
class EspTunnelStatus:
    """``outbound_spi``: the SA the tunnel sends on (None: nothing is sent, e.g. failed closed).
    ``rekey_needed``: an installed SA disappeared behind the data plane's back (reconcile)."""

    name: str
    reqid: int
    mode: str
    policies: int
    inbound: tuple[SaStatus, ...]
    outbound: tuple[SaStatus, ...]
    outbound_spi: int | None
    failed_closed: bool
    rekey_needed: bool


def sa_status(sa: SaState, direction: Literal["in", "out"]) -> SaStatus:
    return SaStatus(
        spi=sa.spi, direction=direction, larval=sa.larval, bytes=sa.bytes, packets=sa.packets,
        add_time=sa.add_time, lifetime=sa.lifetime, replay_window=sa.replay_window, esn=sa.esn,
        replay_errors=sa.replay_errors, integrity_failures=sa.integrity_failures,
    )
