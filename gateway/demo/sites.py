"""The demo's plan: which sites, their IDs, addresses, tunnels and the KME network's shape.

Everything here is pure (no I/O): :func:`plan_lab` turns a site count and a directory into
names and numbers; :mod:`gateway.demo.siteconfig` writes keys and configuration from the plan.

Shape: the first site is the hub (Bucharest); with two sites it is a pair, with more a star from
the hub, like the RoNaQCI backbone. Each site has its own KME; the KMEs of the hub and of every
spoke share a QKD link. Tunnel ``p`` (1-based) uses 10.77.p.0/30: .1 on the hub, .2 on the spoke.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from gateway.demo.topology import KMS_ADDRESS, MAX_SITES, site_wan_address

__all__ = [
    "CITY_NAMES",
    "KME_BASE_PORT",
    "PEER_PORT",
    "WG_BASE_PORT",
    "LabPlan",
    "SitePlan",
    "TunnelPlan",
    "plan_lab",
    "site_names",
]

CITY_NAMES = ("bucharest", "cluj-napoca", "iasi", "timisoara", "craiova", "constanta")
KME_BASE_PORT = 8400  # site i's KME: https://198.18.0.2:(8400+i) in the kms namespace
PEER_PORT = 7447  # the peer control protocol's default port (gateway.config)
WG_BASE_PORT = 51820  # tunnel p listens on 51820+p on both ends (the hub holds several)
TUNNEL_NET = ipaddress.IPv4Network("10.77.0.0/16")


def site_names(count: int) -> list[str]:
    """bucharest, cluj-napoca, iasi, timisoara, craiova, constanta, then site-7, site-8, ..."""
    if not 1 <= count <= MAX_SITES:
        raise ValueError(f"the demo runs 1 to {MAX_SITES} sites, not {count}")
    return [CITY_NAMES[i] if i < len(CITY_NAMES) else f"site-{i + 1}" for i in range(count)]


@dataclass(frozen=True)
class SitePlan:
    """One site: its namespace, WAN address, IDs and files."""

    index: int
    name: str
    netns: str
    wan: ipaddress.IPv4Interface
    directory: Path

    @property
    def sae_id(self) -> str:
        return f"sae-{self.name}"

    @property
    def kme_id(self) -> str:
        return f"kme-{self.name}"

    @property
    def kme_port(self) -> int:
        return KME_BASE_PORT + self.index

    @property
    def kme_url(self) -> str:
        return f"https://{KMS_ADDRESS.ip}:{self.kme_port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def log_path(self) -> Path:
        """Where the site daemon's output goes (JSON log lines)."""
        return self.directory / "daemon.log"


@dataclass(frozen=True)
class TunnelPlan:
    """One WireGuard tunnel between the hub and a spoke; both ends use the same name."""

    pair: int
    hub: str
    spoke: str
    prefix: str

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
        return f"{self.prefix}w{self.pair}{self.side(site)}"

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
class LabPlan:
    """The whole demo: sites, tunnels, timers and where files go (``root``)."""

    prefix: str
    root: Path
    sites: list[SitePlan]
    tunnels: list[TunnelPlan]
    rekey_interval: float
    backend: str = "auto"
    key_rate: float = 0.0
    max_key_count: int = 10_000
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
        # Half a rekey interval of slack before a tunnel fails closed, as WireGuard's 120/180 s.
        return self.rekey_interval * 1.5

    def tunnels_of(self, site: str) -> list[TunnelPlan]:
        return [t for t in self.tunnels if site in (t.hub, t.spoke)]

    def kms_sim_args(self) -> list[str]:
        """Arguments of ``qkd-gateway kms-sim`` for this lab (after the subcommand)."""
        args = ["--pki-dir", str(self.pki_dir)]
        for s in self.sites:
            args += ["--kme", f"{s.kme_id}={KMS_ADDRESS.ip}:{s.kme_port}"]
        for t in self.tunnels:
            args += ["--link", f"{self.by_name[t.hub].kme_id}:{self.by_name[t.spoke].kme_id}"]
        for s in self.sites:
            args += ["--sae", f"{s.sae_id}@{s.kme_id}"]
        args += ["--key-rate", f"{self.key_rate:g}", "--max-key-count", str(self.max_key_count)]
        return args


def plan_lab(
    prefix: str,
    root: Path,
    count: int,
    rekey_interval: float,
    backend: str = "auto",
    netns: dict[str, str] | None = None,
) -> LabPlan:
    """Plan ``count`` sites under ``root``. ``netns`` maps site name -> namespace (default
    ``<prefix>-<name>``, the names :class:`~gateway.demo.topology.Topology` uses)."""
    if rekey_interval < 1:
        raise ValueError("the rekey interval must be at least 1 s")
    names = site_names(count)
    sites = [
        SitePlan(i, name, (netns or {}).get(name, f"{prefix}-{name}"), site_wan_address(i),
                 root / "sites" / name)
        for i, name in enumerate(names)
    ]
    tunnels = [TunnelPlan(p, names[0], spoke, prefix) for p, spoke in enumerate(names[1:], 1)]
    return LabPlan(prefix, root, sites, tunnels, float(rekey_interval), backend)
