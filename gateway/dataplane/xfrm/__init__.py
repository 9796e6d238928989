"""XFRM/ESP data plane: tunnel-mode ESP with AES-256-GCM (``rfc4106(gcm(aes))``) programmed over
NETLINK_XFRM, policy-based or route-based (XFRM interface), with make-before-break rollovers,
fail-closed, and ownership by reqid. See docs/dataplane.md ("XFRM/ESP").

The daemon builds an :class:`EspTunnelSpec` per tunnel and drives an :class:`EspTunnel`; one
:class:`XfrmMonitor` per network namespace delivers soft/hard expiries and acquires.
"""

from gateway.dataplane.xfrm.client import XfrmClient, esp_unavailable
from gateway.dataplane.xfrm.consts import (
    AEAD_ALGORITHM,
    AEAD_ICV_BITS,
    AEAD_KEY_LEN,
    REQID_MAX,
    REQID_MIN,
    Direction,
)
from gateway.dataplane.xfrm.errors import (
    SaMismatch,
    XfrmError,
    XfrmExists,
    XfrmKernelError,
    XfrmNotFound,
    XfrmOwnershipConflict,
    XfrmSpecError,
    XfrmTimeout,
    XfrmUnavailable,
)
from gateway.dataplane.xfrm.model import (
    EspTunnelStatus,
    Lifetime,
    Mark,
    SaAcquire,
    SaExpired,
    SaStatus,
    XfrmEvent,
    XfrmEventsLost,
)
from gateway.dataplane.xfrm.monitor import XfrmMonitor
from gateway.dataplane.xfrm.spec import EspTunnelSpec, TunnelMode, assign_reqids, reqid_for
from gateway.dataplane.xfrm.tunnel import EspTunnel

__all__ = [
    "AEAD_ALGORITHM",
    "AEAD_ICV_BITS",
    "AEAD_KEY_LEN",
    "REQID_MAX",
    "REQID_MIN",
    "Direction",
    "EspTunnel",
    "EspTunnelSpec",
    "EspTunnelStatus",
    "Lifetime",
    "Mark",
    "SaAcquire",
    "SaExpired",
    "SaMismatch",
    "SaStatus",
    "TunnelMode",
    "XfrmClient",
    "XfrmError",
    "XfrmEvent",
    "XfrmEventsLost",
    "XfrmExists",
    "XfrmKernelError",
    "XfrmMonitor",
    "XfrmNotFound",
    "XfrmOwnershipConflict",
    "XfrmSpecError",
    "XfrmTimeout",
    "XfrmUnavailable",
    "assign_reqids",
    "esp_unavailable",
    "reqid_for",
]
