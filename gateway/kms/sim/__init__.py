"""The embedded, spec-exact ETSI GS QKD 014 (and SKIP) KME network for tests and demos.

``KmeNetwork`` starts one mutual-TLS HTTPS server per KME on loopback (or any address given),
with QKD links whose key pools drain and refill, trusted-node relay, and fault injection.
The ``qkd-gateway kms-sim`` command runs the same network as a process. See docs/kms-sim.md.
"""

from gateway.kms.sim.errors import (
    MSG_EXT_MANDATORY,
    MSG_KEYS_NOT_FOUND,
    MSG_SIZE_MULTIPLE_OF_8,
)
from gateway.kms.sim.faults import MSG_INJECTED_503, Faults
from gateway.kms.sim.model import PATH_EXTENSION, KmeLimits, LinkSpec
from gateway.kms.sim.network import KmeNetwork, server_tls_context
from gateway.kms.sim.pki import Pki, ensure_pki
from gateway.kms.sim.rates import (
    ConstantRate,
    Fluctuation,
    PeriodicRate,
    RandomWalkRate,
    RateProfile,
    parse_fluctuation,
)

__all__ = [
    "MSG_EXT_MANDATORY",
    "MSG_INJECTED_503",
    "MSG_KEYS_NOT_FOUND",
    "MSG_SIZE_MULTIPLE_OF_8",
    "PATH_EXTENSION",
    "ConstantRate",
    "Faults",
    "Fluctuation",
    "KmeLimits",
    "KmeNetwork",
    "LinkSpec",
    "PeriodicRate",
    "Pki",
    "RandomWalkRate",
    "RateProfile",
    "ensure_pki",
    "parse_fluctuation",
    "server_tls_context",
]
