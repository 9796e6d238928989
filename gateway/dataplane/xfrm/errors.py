"""Errors of the XFRM/ESP data plane. Each names the operation (with SPI, addresses, tunnel) and
what to do; none ever carries key bytes (the kernel is asked not to echo requests, see
consts.NETLINK_CAP_ACK, and messages are built from SPIs and addresses only).

    DataplaneError                         (gateway.dataplane.errors)
    └── XfrmError
        ├── XfrmSpecError (SpecError)      an EspTunnelSpec or argument is invalid; nothing changed
        ├── XfrmKernelError (BackendCallFailed)  the kernel refused a request (.operation, .errno)
        │   ├── XfrmUnavailable            no ESP / AES-GCM / xfrm_user / xfrm interfaces here
        │   ├── XfrmNotFound               ESRCH/ENOENT: the SA or policy does not exist
        │   └── XfrmExists                 EEXIST: an SA with that SPI / a policy with that key
        ├── XfrmOwnershipConflict          the object we need belongs to another daemon
        ├── SaMismatch                     read-back differs from what was written (fail closed)
        └── XfrmTimeout (DataplaneTimeout) a request got no answer in time
"""

from __future__ import annotations

import errno as errno_mod
import os

from gateway.dataplane.errors import (
    BackendCallFailed,
    DataplaneError,
    DataplaneTimeout,
    SpecError,
)

__all__ = [
    "SaMismatch",
    "XfrmError",
    "XfrmExists",
    "XfrmKernelError",
    "XfrmNotFound",
    "XfrmOwnershipConflict",
    "XfrmSpecError",
    "XfrmTimeout",
    "XfrmUnavailable",
    "kernel_error",
]

_MISSING_FEATURE = (
    "this kernel lacks ESP or AES-GCM: load the modules (`modprobe esp4 esp6 gcm xfrm_user`), "
    "or run where they exist (`make test-vm` runs the kernel lab)"
)


class XfrmError(DataplaneError):
    """Base of every XFRM data plane error."""


class XfrmSpecError(XfrmError, SpecError):
    """An EspTunnelSpec field or call argument is invalid. Raised before anything changes."""


class XfrmKernelError(XfrmError, BackendCallFailed):
    """The kernel answered a request with an error."""

    def __init__(self, message: str, *, operation: str, errno: int | None) -> None:
        super().__init__(message, errno=errno)
        self.operation = operation


class XfrmUnavailable(XfrmKernelError):
    """The kernel cannot do ESP with AES-GCM (or XFRM netlink, or xfrm interfaces) here."""


class XfrmNotFound(XfrmKernelError):
    """The SA or policy named in the request does not exist."""


class XfrmExists(XfrmKernelError):
    """An SA with that SPI, or a policy with that selector/direction/mark/if_id, exists."""


class XfrmOwnershipConflict(XfrmError):
    """The object this tunnel needs (a policy slot, an SPI, an interface) belongs to someone
    else (another reqid: strongSwan, Libreswan, an operator). Never overwritten."""


class SaMismatch(XfrmError):
    """An SA read back from the kernel differs from the one just written."""


class XfrmTimeout(XfrmError, DataplaneTimeout):
    """An XFRM request or the namespace socket set-up did not finish in time."""


def kernel_error(operation: str, code: int, detail: str | None = None) -> XfrmKernelError:
    """The typed error for errno ``code`` answered to ``operation`` (with the kernel's extended
    ack text, ``detail``, when it sent one)."""
    name = errno_mod.errorcode.get(code, str(code))
    reason = f"{name} ({detail})" if detail else f"{name} ({os.strerror(code)})"
    cls: type[XfrmKernelError] = XfrmKernelError
    hint = ""
    if code in (errno_mod.ESRCH, errno_mod.ENOENT):
        cls = XfrmNotFound
    elif code == errno_mod.EEXIST:
        cls = XfrmExists
    elif code in (errno_mod.EPROTONOSUPPORT, errno_mod.ENOSYS, errno_mod.EOPNOTSUPP):
        cls, hint = XfrmUnavailable, _MISSING_FEATURE
    elif code == errno_mod.EPERM:
        hint = "needs CAP_NET_ADMIN in the target network namespace: run as root"
    elif code == errno_mod.EINVAL:
        hint = "the kernel rejected a field; check address families, SPI and replay window"
    elif code in (errno_mod.ENOBUFS, errno_mod.ENOMEM):
        hint = "the kernel is out of memory or the socket buffer overflowed; retry"
    message = f"xfrm: {operation} failed: {reason}" + (f"; {hint}" if hint else "")
    return cls(message, operation=operation, errno=code)
