"""The demo's plan: which sites, their IDs, addresses, tunnels and the KME network's shape.

Everything here is pure (no I/O): :func:`plan_lab` turns a site count and a directory into
names and numbers (the ``pair`` and ``star`` topologies; ``ronaqci`` is planned by
:mod:`gateway.demo.ronaqci`); :mod:`gateway.demo.siteconfig` writes keys and configuration from
the plan.

Shape of ``pair``/``star``: the first site is the hub (Bucharest); with two sites it is a pair,
with more a star from the hub. Each site has its own KME; the KMEs of the hub and of every spoke
share a QKD link. Tunnel ``p`` (1-based) uses 10.77.p.0/30: .1 on the hub, .2 on the spoke.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from gateway.demo.kmsplan import KME_BASE_PORT, KmePlan, KmsPlan, LinkPlan
from gateway.demo.topology import MAX_SITES, site_wan_address

__all__ = [
    "CITY_NAMES",
    "DATAPLANES",
    "KMS_PATH_NAME",
    "PEER_PORT",
    "WG_BASE_PORT",
    "KmsSettings",
    "LabPlan",
    "SitePlan",
    "TunnelPlan",
    "dataplane_of",
    "make_sites",
    "plan_lab",
    "site_names",
]

CITY_NAMES = ("bucharest", "cluj-napoca", "iasi", "timisoara", "craiova", "constanta")
PEER_PORT = 7447  # the peer control protocol's default port (gateway.config)
WG_BASE_PORT = 51820  # tunnel p listens on 51820+p on both ends (the hub holds several)
TUNNEL_NET = ipaddress.IPv4Network("10.77.0.0/16")
# A tunnel's `kms` list names KMS *paths*, and the peer protocol disables a tunnel whose two ends
# list different names (policy_mismatch). In pair/star every site reaches the one QKD backbone
# through its own KME, so each site's single KMS entry carries this same name.
KMS_PATH_NAME = "qkd-backbone"
# wireguard: kernel WireGuard if the kernel has it, else wireguard-go; kernel: kernel WireGuard
# (netlink) or a refusal; xfrm: ESP tunnels; mixed: ESP and WireGuard tunnels alternating.
DATAPLANES = ("wireguard", "kernel", "xfrm", "mixed")


def site_names(count: int) -> list[str]:
    """bucharest, cluj-napoca, iasi, timisoara, craiova, constanta, then site-7, site-8, ..."""
    if not 1 <= count <= MAX_SITES:
        raise ValueError(f"the demo runs 1 to {MAX_SITES} sites, not {count}")
    return [CITY_NAMES[i] if i < len(CITY_NAMES) else f"site-{i + 1}" for i in range(count)]


@dataclass(frozen=True)
class SitePlan:
    """One site: its namespace, WAN address, IDs, files and the KMEs it uses (one per network)."""

    index: int
    name: str
    netns: str
    wan: ipaddress.IPv4Interface
    directory: Path
    kmes: tuple[KmePlan, ...] = ()

    @property
    def sae_id(self) -> str:
        return f"sae-{self.name}"

    @property
    def kme(self) -> KmePlan:
        """The site's KME in its first network (pair/star: its only one)."""
        if not self.kmes:
            raise ValueError(f"site {self.name!r} has no KME in the plan")
        return self.kmes[0]

    @property
    def kme_id(self) -> str:
        return self.kme.kme_id

    @property
    def kme_port(self) -> int:
        return self.kme.port

    @property
    def kme_url(self) -> str:
        return self.kme.url

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def log_path(self) -> Path:
        """Where the site daemon's output goes (JSON log lines)."""
        return self.directory / "daemon.log"


@dataclass(frozen=True)
class TunnelPlan:
    """One tunnel between a hub and a spoke; both ends use the same name. ``kms``: the KME
    networks its key comes from (several: one QKD key from each, combined); ``dataplane``:
    ``wireguard`` or ``esp`` (an XFRM tunnel)."""

    pair: int
    hub: str
    spoke: str
    prefix: str
    kms: tuple[str, ...] = (KMS_PATH_NAME,)
    dataplane: str = "wireguard"

    @property
    def name(self) -> str:
        return f"{self.hub}--{self.spoke}"

    def side(self, site: str) -> str:
        if site not in (self.hub, self.spoke):
            raise ValueError(f"site {site!r} is not an end of tunnel {self.name}")
        return "h" if site == self.hub else "s"

    def peer(self, site: str) -> str:
        return self.spoke if self.side(site) == "h" else self.hub

    def interface(self, site: str) -> str:
        # Unique across namespaces: wireguard-go's UAPI sockets share /var/run/wireguard.
        kind = "w" if self.dataplane == "wireguard" else "x"
        return f"{self.prefix}{kind}{self.pair}{self.side(site)}"

    def address(self, site: str) -> ipaddress.IPv4Interface:
        host = 1 if self.side(site) == "h" else 2
        return ipaddress.IPv4Interface(f"{self.network.network_address + host}/30")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.77.{self.pair}.0/30")

    @property
    def listen_port(self) -> int:
        return WG_BASE_PORT + self.pair


@dataclass(frozen=True)
class KmsSettings:
    """What every site's KMS entries say beyond the URL: the gateway's key pool and the stock
    below which rotation stretches (docs/config.md, ``kms[].pool``, ``kms[].low_stock``).
    None: the gateway's defaults."""

    target: int | None = None
    batch: int | None = None
    low_water: int | None = None
    low_stock: int | None = None


@dataclass(frozen=True)
class LabPlan:
    """The whole demo: sites, tunnels, the KME network, timers and where files go (``root``).

    ``starved``: the QKD link deliberately short of key (KME IDs) and ``starved_tunnel`` the
    tunnel whose key crosses it, when the topology has one.
    """

    prefix: str
    root: Path
    sites: list[SitePlan]
    tunnels: list[TunnelPlan]
    rekey_interval: float
    kms: KmsPlan
    backend: str = "auto"
    topology: str = "star"
    reject_factor: float = 1.5
    kms_settings: KmsSettings = field(default_factory=KmsSettings)
    starved: tuple[str, str] | None = None
    starved_tunnel: str | None = None
    mqtt: str | None = None  # mqtt://host:port as the sites reach it, or None
    # Overrides of the KME network's default link rate (bits/s) and store size (keys); None:
    # the KmsPlan's. (Tests of the gateway set them on a built plan.)
    key_rate: float | None = None
    max_key_count: int | None = None
    by_name: dict[str, SitePlan] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {s.name: s for s in self.sites})

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def kms_log_path(self) -> Path:
        return self.root / "kms-sim.log"

    @property
    def reject_after(self) -> float:
        # pair/star: half a rekey interval of slack before a tunnel fails closed, as WireGuard's
        # 120/180 s; ronaqci gives stretched rotation room (see gateway.demo.ronaqci).
        return self.rekey_interval * self.reject_factor

    def tunnels_of(self, site: str) -> list[TunnelPlan]:
        return [t for t in self.tunnels if site in (t.hub, t.spoke)]

    def tunnel(self, name: str) -> TunnelPlan:
        for t in self.tunnels:
            if t.name == name:
                return t
        raise KeyError(f"no tunnel {name!r} in the plan")

    def kms_sim_args(self) -> list[str]:
        """Arguments of ``qkd-gateway kms-sim`` for this lab (after the subcommand)."""
        kms = self.kms
        if self.key_rate is not None:
            kms = dataclasses.replace(kms, default_rate_bps=self.key_rate)
        if self.max_key_count is not None:
            kms = dataclasses.replace(kms, max_key_count=self.max_key_count)
        return kms.kms_sim_args(str(self.pki_dir))


def dataplane_of(dataplane: str, pair: int) -> str:
    """The data plane of tunnel ``pair`` under the ``--dataplane`` choice: ``mixed`` alternates
    ESP (odd pairs) and WireGuard (even pairs); ``kernel`` is WireGuard (on the kernel backend)."""
    if dataplane not in DATAPLANES:
        raise ValueError(f"--dataplane {dataplane!r}: choose one of {', '.join(DATAPLANES)}")
    if dataplane == "mixed":
        return "esp" if pair % 2 else "wireguard"
    return "esp" if dataplane == "xfrm" else "wireguard"


def make_sites(prefix: str, root: Path, names: list[str], kms: KmsPlan,
               netns: dict[str, str] | None = None) -> list[SitePlan]:
    """Site ``i`` of ``names`` gets WAN address 198.18.0.(10+i) and its KMEs from ``kms``."""
    return [
        SitePlan(i, name, (netns or {}).get(name, f"{prefix}-{name}"), site_wan_address(i),
                 root / "sites" / name, tuple(kms.of_site(name)))
        for i, name in enumerate(names)
    ]


def plan_lab(
    prefix: str,
    root: Path,
    count: int,
    rekey_interval: float,
    backend: str = "auto",
    netns: dict[str, str] | None = None,
    dataplane: str = "wireguard",
) -> LabPlan:
    """Plan ``count`` sites under ``root`` (``pair``/``star``). ``netns`` maps site name ->
    namespace (default ``<prefix>-<name>``, the names :class:`~gateway.demo.topology.Topology`
    uses)."""
    if rekey_interval < 1:
        raise ValueError("the rekey interval must be at least 1 s")
    names = site_names(count)
    kmes = [KmePlan(f"kme-{n}", KME_BASE_PORT + i, KMS_PATH_NAME, n, n)
            for i, n in enumerate(names)]
    # Links never refill (the network's default rate, 0) but hold 10,000 keys: hours of
    # rotation at the default rate.
    links = [LinkPlan(kmes[0].kme_id, k.kme_id) for k in kmes[1:]]
    kms = KmsPlan(kmes, links)
    sites = make_sites(prefix, root, names, kms, netns)
    tunnels = [TunnelPlan(p, names[0], spoke, prefix, dataplane=dataplane_of(dataplane, p))
               for p, spoke in enumerate(names[1:], 1)]
    return LabPlan(prefix, root, sites, tunnels, float(rekey_interval), kms, backend,
                   topology="pair" if count == 2 else "star")
