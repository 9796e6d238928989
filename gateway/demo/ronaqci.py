"""The RoNaQCI topology: six cities, trusted nodes on the long spans, two KME networks.

::

            (ronaqci-2)  ploiesti ─ brasov ─ sighisoara ─ targu-mures ─┐
                      ┌─────────────────────────────────────────────cluj-napoca
        bucharest ────┤ pitesti ─ sibiu ─ alba-iulia ───────────────┘
         │  │  │      │    └─ craiova ─ drobeta-turnu-severin ─ caransebes ─ timisoara
         │  │  └ buzau ─ focsani ─ bacau ─ iasi
         │  └ slobozia ═══ constanta          (═══ the starved span)
         └ (ronaqci-2 starts at bucharest too)

Each city is a site: a network namespace with its gateway daemon, and its own KME in the
RoNaQCI backbone (network ``ronaqci``). Spans longer than ~150 km, the practical reach of a QKD
link, are cut by **trusted nodes** (KMEs in towns on the route, with no gateway), and a city's
KME relays for others too (Craiova's for Timisoara). Every trusted node holds in the clear each
key it forwards.

The answer to that: Bucharest and Cluj-Napoca are also in a second, independent KME network
(``ronaqci-2``: another operator, or a virtual network of the same one) whose trusted nodes,
Ploiesti, Brasov, Sighisoara and Targu Mures, share nothing with the backbone's route through
Pitesti, Sibiu and Alba Iulia. Their tunnel lists both (``kms: [ronaqci, ronaqci-2]``); the
combiner mixes one QKD key from each, so no single trusted node, nor one whole network, knows
the tunnel's key.

Every span's length and mean key rate come from :mod:`gateway.demo.keyrate`. One span is short of
key on purpose: Slobozia-Constanta carries classical DWDM traffic too (charged
:data:`STARVED_PENALTY_DB` of Raman noise), and at start a second application, an off-site
backup from Constanta to Bucharest (:mod:`gateway.demo.consumer`), takes that span's key as fast
as it comes; the Constanta tunnel then sees low stock, stretches its rotation and raises
``kms_low_stock`` until the backup ends and the stock recovers.
"""

from __future__ import annotations

from pathlib import Path

from gateway.demo.keyrate import LatLon, fibre_km, secret_key_rate_bps
from gateway.demo.kmsplan import KME_BASE_PORT, KmePlan, KmsPlan, LinkPlan
from gateway.demo.sites import (
    CITY_NAMES,
    KmsSettings,
    LabPlan,
    TunnelPlan,
    dataplane_of,
    make_sites,
)

__all__ = [
    "BACKBONE",
    "BACKUP_SAES",
    "PLACES",
    "SECOND",
    "SPANS",
    "STARVED",
    "STARVED_PENALTY_DB",
    "TUNNELS",
    "kme_id",
    "plan_ronaqci",
]

BACKBONE = "ronaqci"
SECOND = "ronaqci-2"

# Town centres (latitude, longitude in degrees), public gazetteer values rounded to 4 places.
PLACES: dict[str, LatLon] = {
    "bucharest": (44.4268, 26.1025),
    "cluj-napoca": (46.7712, 23.6236),
    "iasi": (47.1585, 27.6014),
    "timisoara": (45.7489, 21.2087),
    "craiova": (44.3302, 23.7949),
    "constanta": (44.1598, 28.6348),
    "pitesti": (44.8565, 24.8692),
    "sibiu": (45.7983, 24.1256),
    "alba-iulia": (46.0733, 23.5805),
    "drobeta-turnu-severin": (44.6319, 22.6561),
    "caransebes": (45.4167, 22.2167),
    "buzau": (45.1500, 26.8236),
    "focsani": (45.6965, 27.1858),
    "bacau": (46.5670, 26.9146),
    "slobozia": (44.5639, 27.3661),
    "ploiesti": (44.9417, 26.0236),
    "brasov": (45.6427, 25.5887),
    "sighisoara": (46.2197, 24.7964),
    "targu-mures": (46.5386, 24.5575),
}

SPANS: dict[str, list[tuple[str, str]]] = {
    BACKBONE: [
        ("bucharest", "pitesti"), ("pitesti", "craiova"),
        ("craiova", "drobeta-turnu-severin"), ("drobeta-turnu-severin", "caransebes"),
        ("caransebes", "timisoara"),
        ("pitesti", "sibiu"), ("sibiu", "alba-iulia"), ("alba-iulia", "cluj-napoca"),
        ("bucharest", "buzau"), ("buzau", "focsani"), ("focsani", "bacau"), ("bacau", "iasi"),
        ("bucharest", "slobozia"), ("slobozia", "constanta"),
    ],
    SECOND: [
        ("bucharest", "ploiesti"), ("ploiesti", "brasov"), ("brasov", "sighisoara"),
        ("sighisoara", "targu-mures"), ("targu-mures", "cluj-napoca"),
    ],
}

# The span short of key, and what it is charged: 5 dB puts its 140 km at ~0.5 kbit/s instead of
# ~1.6 kbit/s. Our choice, to make the effect visible within a minute, not a measured value.
STARVED = ("slobozia", "constanta")
STARVED_PENALTY_DB = 5.0

# Tunnels from the capital to every other city; (spoke, KME networks of its key).
TUNNELS: list[tuple[str, tuple[str, ...]]] = [
    ("cluj-napoca", (BACKBONE, SECOND)),
    ("iasi", (BACKBONE,)),
    ("timisoara", (BACKBONE,)),
    ("craiova", (BACKBONE,)),
    ("constanta", (BACKBONE,)),
]

# The backup application's two SAEs (not gateways): it drains the starved span at start.
BACKUP_SAES = ("sae-constanta-backup", "sae-bucharest-backup")

# Key pools small enough that a gateway holds few keys ahead (a starved span shows at once), and
# stretch below 8 keys in stock: ~40 s of rotation at 5 s, the order of the demo's window.
KMS_SETTINGS = KmsSettings(target=4, batch=2, low_water=2, low_stock=8)
MAX_KEY_COUNT = 256  # keys of 256 bits a link's store holds: 64 kbit, ~10 s of a 140 km span
# Each span's rate wanders +-30 % around its mean, a new value every second (seeded).
FLUCTUATION = "walk:0.3:1"
STOCK_REPORT_S = 1.0
# reject_after = 3 x rekey_interval: room for the stretched interval (up to reject_after minus a
# quarter of the window, gateway.daemon.schedule): 12.5 s at a 5 s interval instead of 6.9 s.
REJECT_FACTOR = 3.0


def kme_id(network: str, place: str) -> str:
    """``kme-<place>`` in the backbone, ``kme-<place>-2`` in the second network."""
    return f"kme-{place}" if network == BACKBONE else f"kme-{place}-2"


def ronaqci_kms(seed: int = 0) -> KmsPlan:
    """The two KME networks with every span's length and rate."""
    kmes: list[KmePlan] = []
    links: list[LinkPlan] = []
    for network, spans in SPANS.items():
        places = list(dict.fromkeys(p for span in spans for p in span))
        for place in places:
            site = place if place in CITY_NAMES else None
            kmes.append(KmePlan(kme_id(network, place), KME_BASE_PORT + len(kmes), network,
                                place, site))
        for a, b in spans:
            length = fibre_km(PLACES[a], PLACES[b])
            starved = (a, b) == STARVED
            penalty = STARVED_PENALTY_DB if starved else 0.0
            links.append(LinkPlan(kme_id(network, a), kme_id(network, b),
                                  secret_key_rate_bps(length, penalty), length, penalty,
                                  "starved: shares its fibre with DWDM traffic; a backup "
                                  "application drains it at start" if starved else ""))
    backup = [(BACKUP_SAES[0], kme_id(BACKBONE, "constanta")),
              (BACKUP_SAES[1], kme_id(BACKBONE, "bucharest"))]
    return KmsPlan(kmes, links, max_key_count=MAX_KEY_COUNT, fluctuation=FLUCTUATION, seed=seed,
                   report_interval=STOCK_REPORT_S, extra_saes=backup)


def plan_ronaqci(prefix: str, root: Path, rekey_interval: float, backend: str = "auto",
                 netns: dict[str, str] | None = None, dataplane: str = "wireguard",
                 seed: int = 0, mqtt: str | None = None) -> LabPlan:
    """The RoNaQCI lab: six sites, the tunnels of :data:`TUNNELS`, the KME networks."""
    if rekey_interval < 1:
        raise ValueError("the rekey interval must be at least 1 s")
    kms = ronaqci_kms(seed)
    names = list(CITY_NAMES)
    sites = make_sites(prefix, root, names, kms, netns)
    tunnels = [TunnelPlan(p, names[0], spoke, prefix, networks, dataplane_of(dataplane, p))
               for p, (spoke, networks) in enumerate(TUNNELS, 1)]
    starved = (kme_id(BACKBONE, STARVED[0]), kme_id(BACKBONE, STARVED[1]))
    return LabPlan(prefix, root, sites, tunnels, float(rekey_interval), kms, backend,
                   topology="ronaqci", reject_factor=REJECT_FACTOR, kms_settings=KMS_SETTINGS,
                   starved=starved, starved_tunnel=f"{names[0]}--{STARVED[1]}", mqtt=mqtt)
