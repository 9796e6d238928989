"""Errors raised by the data plane. Messages say what failed and how to fix it; none carries key
bytes (public keys may appear: they are not secret and operators grep for them).

    DataplaneError
    ├── BackendUnavailable        no usable WireGuard implementation on this host
    ├── SpecError (ValueError)    a spec field is malformed (key, endpoint, CIDR, name)
    ├── InterfaceNotFound         adopt mode / set_psk / status on an interface that does not exist
    ├── InterfaceConflict         the name is taken (another namespace's UAPI socket, another kind)
    ├── PeerNotFound              the peer is not configured on the interface
    ├── PskNotApplied             set_psk wrote a PSK but reading it back did not return it
    ├── BackendCallFailed         the kernel (netlink) or wireguard-go (UAPI errno) refused a call
    └── DataplaneTimeout (TimeoutError)  a netlink / UAPI / process call did not finish in time
"""

from __future__ import annotations

__all__ = [
    "BackendCallFailed",
    "BackendUnavailable",
    "DataplaneError",
    "DataplaneTimeout",
    "InterfaceConflict",
    "InterfaceNotFound",
    "PeerNotFound",
    "PskNotApplied",
    "SpecError",
]


class DataplaneError(Exception):
    """Base of every data plane error."""


class BackendUnavailable(DataplaneError):
    """Neither kernel WireGuard nor wireguard-go can be used (or the one asked for is missing)."""


class SpecError(DataplaneError, ValueError):
    """A value in a WgInterfaceSpec / WgPeerSpec is malformed."""


class InterfaceNotFound(DataplaneError):
    """The interface does not exist (in the backend's network namespace)."""


class InterfaceConflict(DataplaneError):
    """The interface name is already used by something this backend must not touch."""


class PeerNotFound(DataplaneError):
    """The peer public key is not configured on the interface."""


class PskNotApplied(DataplaneError):
    """The PSK read back from the interface differs from the one just written (fail closed)."""


class BackendCallFailed(DataplaneError):
    """Netlink or the UAPI socket answered with an error."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class DataplaneTimeout(DataplaneError, TimeoutError):
    """A data plane call exceeded its time budget."""
