"""WireGuard data plane: kernel (netlink) and user-space (wireguard-go UAPI) backends.

The daemon builds a :class:`WgInterfaceSpec`, calls ``select_backend(...).apply(spec)`` and then
``set_psk`` for every new key. See docs/dataplane.md.
"""

from gateway.dataplane.errors import (
    BackendCallFailed,
    BackendUnavailable,
    DataplaneError,
    DataplaneTimeout,
    InterfaceConflict,
    InterfaceNotFound,
    PeerNotFound,
    PskNotApplied,
    SpecError,
)
from gateway.dataplane.kernel import KernelBackend
from gateway.dataplane.select import kernel_wireguard_available, select_backend
from gateway.dataplane.types import (
    BackendPreference,
    PeerStatus,
    WgInterfaceSpec,
    WgPeerSpec,
    WireGuardBackend,
)
from gateway.dataplane.userspace import UserspaceBackend

__all__ = [
    "BackendCallFailed",
    "BackendPreference",
    "BackendUnavailable",
    "DataplaneError",
    "DataplaneTimeout",
    "InterfaceConflict",
    "InterfaceNotFound",
    "KernelBackend",
    "PeerNotFound",
    "PeerStatus",
    "PskNotApplied",
    "SpecError",
    "UserspaceBackend",
    "WgInterfaceSpec",
    "WgPeerSpec",
    "WireGuardBackend",
    "kernel_wireguard_available",
    "select_backend",
]
