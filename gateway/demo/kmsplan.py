"""The plan of the demo's KME network: KMEs, QKD links, SAE attachments, and the paths keys take.

Pure data. :class:`KmsPlan` turns into the arguments of ``qkd-gateway kms-sim`` (which runs the
whole KME network in the lab's ``kms`` namespace, one HTTPS port per KME on 198.18.0.2) and
answers which KMEs a key crosses between two sites (:meth:`KmsPlan.path`), with the very routing
rule of the simulator (:class:`gateway.kms.sim.model.KeyNetwork`).

A KME either belongs to a site (its gateway is the KME's SAE) or is a *trusted node*: a relay
on a long span that holds every key it forwards in the clear. A *network* is a set of KMEs joined
by links, with its own name; a site config lists one KMS entry per network the site is in, named
after the network, so a tunnel's ``kms: [a, b]`` list names the networks its key comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.demo.topology import KMS_ADDRESS
from gateway.kms.sim.model import KeyNetwork, KmeLimits, LinkSpec

__all__ = ["KME_BASE_PORT", "KmePlan", "KmsPlan", "LinkPlan"]

KME_BASE_PORT = 8400  # KME i listens on https://198.18.0.2:(8400+i) in the kms namespace


@dataclass(frozen=True)
class KmePlan:
    """One KME of the network."""

    kme_id: str
    port: int
    network: str  # the name of the KME network (= the KMS entry name in site configs)
    place: str  # the town it stands in
    site: str | None = None  # the site whose gateway uses it; None for a trusted node

    @property
    def url(self) -> str:
        return f"https://{KMS_ADDRESS.ip}:{self.port}"

    @property
    def trusted_node(self) -> bool:
        return self.site is None


@dataclass(frozen=True)
class LinkPlan:
    """One QKD link between two KMEs, with its modelled length and mean key rate (None: the
    network's default rate)."""

    a: str
    b: str
    rate_bps: float | None = None
    length_km: float | None = None
    penalty_db: float = 0.0
    note: str = ""  # why this link is special, for the report ("" for most)

    @property
    def name(self) -> tuple[str, str]:
        return (self.a, self.b) if self.a <= self.b else (self.b, self.a)

    def argument(self) -> str:
        """The ``--link`` argument of ``qkd-gateway kms-sim``."""
        rate = "" if self.rate_bps is None else f"@{self.rate_bps:.1f}"
        return f"{self.a}:{self.b}{rate}"


@dataclass(frozen=True)
class KmsPlan:
    """The whole KME network. ``extra_saes`` are SAEs of other applications (not gateways)."""

    kmes: list[KmePlan]
    links: list[LinkPlan]
    default_rate_bps: float = 0.0
    max_key_count: int = 10_000
    fluctuation: str = "none"
    seed: int = 0
    report_interval: float = 0.0
    extra_saes: list[tuple[str, str]] = field(default_factory=list)  # (SAE ID, KME ID)
    by_id: dict[str, KmePlan] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {k.kme_id: k for k in self.kmes})

    def of_site(self, site: str) -> list[KmePlan]:
        """The KMEs a site's gateway uses, one per network, in plan order."""
        return [k for k in self.kmes if k.site == site]

    def kme_of(self, site: str, network: str) -> KmePlan:
        for k in self.kmes:
            if k.site == site and k.network == network:
                return k
        raise KeyError(f"site {site!r} has no KME in network {network!r}")

    def networks(self) -> list[str]:
        return list(dict.fromkeys(k.network for k in self.kmes))

    def gateway_saes(self) -> dict[str, list[str]]:
        """SAE ID (``sae-<site>``) -> its KMEs, one per network, as kms-sim attaches them."""
        out: dict[str, list[str]] = {}
        for k in self.kmes:
            if k.site is not None:
                out.setdefault(f"sae-{k.site}", []).append(k.kme_id)
        return out

    def kms_sim_args(self, pki_dir: str) -> list[str]:
        """Arguments of ``qkd-gateway kms-sim`` for this network (after the subcommand)."""
        args = ["--pki-dir", pki_dir]
        for k in self.kmes:
            args += ["--kme", f"{k.kme_id}={KMS_ADDRESS.ip}:{k.port}"]
        args += [a for link in self.links for a in ("--link", link.argument())]
        for sae, kmes in self.gateway_saes().items():
            args += [a for kme in kmes for a in ("--sae", f"{sae}@{kme}")]
        args += [a for sae, kme in self.extra_saes for a in ("--sae", f"{sae}@{kme}")]
        args += ["--key-rate", f"{self.default_rate_bps:g}",
                 "--max-key-count", str(self.max_key_count),
                 "--fluctuation", self.fluctuation, "--seed", str(self.seed)]
        if self.report_interval > 0:
            args += ["--report-interval", f"{self.report_interval:g}"]
        return args

    def path(self, network: str, site_a: str, site_b: str) -> list[KmePlan]:
        """The KMEs a key from ``site_a`` to ``site_b`` crosses in ``network`` (ends included),
        by the simulator's own routing rule (fewest hops, ties by KME ID)."""
        model = KeyNetwork([k.kme_id for k in self.kmes],
                           [LinkSpec(link.a, link.b) for link in self.links], {},
                           KmeLimits(max_key_count=0))
        route = model.route(self.kme_of(site_a, network).kme_id,
                            self.kme_of(site_b, network).kme_id)
        return [self.by_id[k] for k in route]

    def link(self, a: str, b: str) -> LinkPlan:
        name = (a, b) if a <= b else (b, a)
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(f"no link {a}-{b} in the plan")
