"""What goes in and out of the protocol core besides bytes.

Actions (core -> daemon) are requests the daemon performs; events (daemon -> core) are their
results, fed back with ``Node.handle``. Every action that expects a result names it. All carry the
tunnel and epoch so that a late result for an abandoned rekey is recognised and dropped.

Activate semantics: make-before-break. InstallKeys installs the INBOUND side only (ESP: the SA
for ``spi_in`` with ``esp_in``; WireGuard: nothing to do yet) and is answered by Installed. Each
side sends its key-confirming message only after Installed, so when a side receives the peer's
confirmation, the peer is already able to receive with the new keys. Activate then switches the
OUTBOUND side (ESP: outbound SA/policy to ``spi_out`` with ``esp_out``; WireGuard: set the PSK,
which WireGuard uses from its next handshake on). Retire removes a superseded epoch's inbound SA
after a grace period; Expire means "no valid key any more": install a random PSK / remove SAs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.keymaterial import Secret
from gateway.kms.types import QKDKey

__all__ = [
    "DISCARD_REASONS",
    "Action",
    "Activate",
    "ActivateFailed",
    "Alarm",
    "AllocateSpi",
    "Close",
    "Event",
    "Expire",
    "FetchQkdKeys",
    "InstallFailed",
    "InstallKeys",
    "Installed",
    "Job",
    "KeysDiscarded",
    "KeysFetchFailed",
    "KeysFetched",
    "KeysTakeFailed",
    "KeysTaken",
    "Output",
    "Retire",
    "Send",
    "SessionUp",
    "SpiAllocated",
    "TakeQkdKeys",
    "TunnelKeys",
    "TunnelStatus",
]


# -- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TakeQkdKeys:
    """Get ``n`` new keys from KMS ``kms`` for ``slave_sae_id`` (ETSI 014 enc_keys) -> KeysTaken
    or KeysTakeFailed."""

    tunnel: str
    epoch: int
    kms: str
    slave_sae_id: str
    n: int = 1


@dataclass(frozen=True, slots=True)
class FetchQkdKeys:
    """Get keys by ID from KMS ``kms`` (ETSI 014 dec_keys) -> KeysFetched or KeysFetchFailed."""

    tunnel: str
    epoch: int
    kms: str
    master_sae_id: str
    key_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AllocateSpi:
    """ESP tunnels only: reserve an inbound SPI >= 256 (XFRM_MSG_ALLOCSPI) -> SpiAllocated."""

    tunnel: str
    epoch: int


@dataclass(frozen=True, slots=True)
class TunnelKeys:
    """Keys of one epoch from this side's point of view. ``achieved`` lists the inputs used."""

    mode: str
    achieved: tuple[str, ...]
    key_ids: tuple[str, ...]
    wg_psk: Secret
    esp_in: Secret
    esp_out: Secret
    spi_in: int
    spi_out: int


@dataclass(frozen=True, slots=True)
class InstallKeys:
    """Install the inbound side of ``epoch`` (see module doc) -> Installed or InstallFailed."""

    tunnel: str
    epoch: int
    keys: TunnelKeys


@dataclass(frozen=True, slots=True)
class Activate:
    tunnel: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Retire:
    tunnel: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Expire:
    tunnel: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class Alarm:
    """Something an operator must see (policy mismatch, downgrade attempt, key expiry ...).

    ``active=False`` clears an alarm the core raised before (today: ``qkd_path_dropped`` when an
    ``any`` tunnel next activates with every QKD path)."""

    name: str
    peer: str
    tunnel: str | None
    reason: str
    active: bool = True


@dataclass(frozen=True, slots=True)
class Close:
    """Close connection ``conn``; the core has already forgotten it."""

    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class SessionUp:
    peer: str
    conn: int
    initiator: bool


#: Why QKD keys were dropped without being activated (``KeysDiscarded.reason``).
DISCARD_REASONS = {
    "collision": "lost a rekey collision after our RekeyInit (with the key IDs) was sent",
    "peer_refused": "the peer answered our RekeyInit with a RekeyAbort",
    "abort": "the exchange failed after the key IDs were sent or the keys fetched",
    "timeout": "the exchange did not finish within rekey_timeout",
    "session_lost": "the session ended while the exchange was running",
    "superseded": "the peer's newer RekeyInit replaced the exchange we had fetched for",
    "peer_fetch_failed": "mode any: the peer could not fetch this path's key",
    "unusable": "the KMS returned a key of the wrong size or ID",
    "late": "a fetch answered after its exchange had ended",
    "expired": "an unused key kept for the next attempt grew older than SPARE_KEY_MAX_AGE",
    "removed": "the tunnel was removed from the configuration",
    "shutdown": "the daemon stopped with the key unused",
    "peer_shutdown": "the peer announced its clean stop, then closed the session while the "
                     "exchange was running",
}


@dataclass(frozen=True, slots=True)
class KeysDiscarded:
    """``count`` QKD keys of KMS path ``kms`` that left the KMS for this tunnel and are dropped
    without being activated; ``reason`` is a key of DISCARD_REASONS. Carries no key bytes and no
    key IDs. ``taken``: this side took them from its own pool (it is the ETSI 014 master: they
    count against its KME stock); False: it fetched them by ID as the slave (the peer took them
    and reports them too, so a site's stock balance counts the ``taken`` ones only)."""

    tunnel: str
    epoch: int
    kms: str
    count: int
    reason: str
    taken: bool


Action = (
    TakeQkdKeys | FetchQkdKeys | AllocateSpi | InstallKeys | Activate | Retire | Expire | Alarm
    | Close | SessionUp | KeysDiscarded
)


# -- events (results of actions) -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeysTaken:
    tunnel: str
    epoch: int
    kms: str
    keys: tuple[QKDKey, ...]


@dataclass(frozen=True, slots=True)
class KeysTakeFailed:
    tunnel: str
    epoch: int
    kms: str
    reason: str


@dataclass(frozen=True, slots=True)
class KeysFetched:
    tunnel: str
    epoch: int
    kms: str
    keys: tuple[QKDKey, ...]


@dataclass(frozen=True, slots=True)
class KeysFetchFailed:
    tunnel: str
    epoch: int
    kms: str
    reason: str


@dataclass(frozen=True, slots=True)
class SpiAllocated:
    tunnel: str
    epoch: int
    spi: int


@dataclass(frozen=True, slots=True)
class Installed:
    tunnel: str
    epoch: int


@dataclass(frozen=True, slots=True)
class InstallFailed:
    tunnel: str
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class ActivateFailed:
    """The data plane could not switch to ``epoch`` (after an Activate). The core reverts its
    view to the previous epoch, raises ``Alarm activate_failed``, tells the peer and rekeys."""

    tunnel: str
    epoch: int
    reason: str


Event = (
    KeysTaken | KeysTakeFailed | KeysFetched | KeysFetchFailed | SpiAllocated | Installed
    | InstallFailed | ActivateFailed
)


@dataclass(frozen=True, slots=True)
class Send:
    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Job:
    """CPU-heavy pure work of the handshake (signatures, encapsulation) that the transport runs
    in a worker thread so the event loop keeps serving rekeys. ``run`` touches no state of the
    core; hand its return value back with ``Node.job_done(job, result, now)``."""

    conn: int
    id: int
    run: Callable[[], object]


@dataclass(slots=True)
class Output:
    """Everything one call into the core produced, in order. ``jobs`` stays empty unless the
    node was told to offload (``Node.offload = True``, set by the Endpoint)."""

    sends: list[Send]
    actions: list[Action]
    jobs: list[Job] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Output:
        return cls([], [])


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    """A tunnel's protocol state for status displays and metrics (times are core ``now``)."""

    tunnel: str
    peer: str
    mode: str
    session_up: bool  # a session with the peer exists and both ends configured it identically
    active_epoch: int  # 0: no key yet
    active_since: float | None
    expired: bool
    rekeys_completed: int
    rekey_in_progress: int | None  # epoch of the unfinished exchange
    diverged: bool = False  # the ends were seen running different keys; a rekey repairs it
