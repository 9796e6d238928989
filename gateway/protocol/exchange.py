"""One rekey exchange's state and the pure helpers around it (validation, transcript, keys).

Split from rekey.py so that the state machine reads as transitions only; nothing here keeps
state across exchanges.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Protocol

from gateway.keymaterial import Secret
from gateway.protocol import combiner as cb
from gateway.protocol.constants import EPOCH_CEILING, MAX_EPOCH_STEP, SPI_MIN
from gateway.protocol.ephemeral import EphemeralPair, Ephemerals
from gateway.protocol.errors import PolicyError
from gateway.protocol.events import Action, TunnelKeys
from gateway.protocol.inner import AbortCode, InnerMessage, RekeyInit, RekeyResp
from gateway.protocol.keyids import PeerKeyIds
from gateway.protocol.policy import Achieved, Kind, TunnelPolicy, check_achieved

__all__ = [
    "Exchange",
    "Sink",
    "check_init",
    "epoch_bound",
    "macs_equal",
    "next_epoch",
    "offered_mask",
    "qkd_secrets",
    "spi_ok",
    "transcript",
    "tunnel_keys",
]


class Sink(Protocol):
    """Where a tunnel's messages and actions go (the node's per-peer collector)."""

    def send(self, msg: InnerMessage) -> None: ...
    def act(self, action: Action) -> None: ...
    def may_initiate(self) -> bool:
        """Whether another exchange towards this peer may start now (MAX_CONCURRENT_EXCHANGES)."""
        ...
    def ephemerals(self) -> Ephemerals:
        """This peer's rekey ephemerals (gateway.protocol.ephemeral)."""
        ...


@dataclass(slots=True)
class Exchange:
    """The one unfinished rekey of a tunnel (either role)."""

    initiator: bool
    epoch: int
    started: float
    waiting: set[str]  # "kms:<name>" and "spi"
    qkd: dict[str, Secret | None] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)  # when each QKD key was taken
    spi: int = 0
    init: RekeyInit | None = None
    stage: str = "gather"  # gather -> await_resp | installing -> await_confirm
    eph: EphemeralPair | None = None  # this side's ephemerals (shared by a burst)
    keys: cb.SessionKeys | None = None
    resp: RekeyResp | None = None


Verdict = tuple[AbortCode | None, tuple[str, str] | None]


def next_epoch(after: int, *, preferred: bool) -> int:
    """The next epoch this side may start: odd for the preferred side (lower SAE ID), even for
    the other. So an epoch number names exactly one exchange, even when both ends start at once,
    and a late action result of an abandoned attempt can never match the peer's exchange."""
    epoch = after + 1
    return epoch if epoch % 2 == int(preferred) else epoch + 1


def epoch_bound(highest: int, last_attempt: int, *, synced: bool) -> int:
    """The highest epoch a peer may name (in a RekeyInit or as a STALE_EPOCH hint). Until the
    tunnel completed an exchange in this process our own epochs may be stale (restart, lost or
    old state), so anything up to EPOCH_CEILING is adopted; afterwards at most MAX_EPOCH_STEP
    beyond what we know."""
    return max(highest, last_attempt) + MAX_EPOCH_STEP if synced else EPOCH_CEILING


def check_init(policy: TunnelPolicy, m: RekeyInit, highest: int, last_attempt: int,
               used: PeerKeyIds, *, enabled: bool, peer_preferred: bool, synced: bool,
               in_flight: dict[str, str]) -> Verdict:
    """Validate a peer's RekeyInit: (abort code or None, (alarm name, reason) or None).
    ``in_flight``: key IDs (per KMS) of the exchange this one would replace."""
    if not enabled:
        return AbortCode.UNKNOWN_TUNNEL, None
    if m.epoch % 2 != int(peer_preferred):
        return AbortCode.POLICY, ("epoch_refused", f"epoch {m.epoch} has the wrong parity for "
                                  "this peer")
    if m.mode is not policy.mode or len(m.key_ids) != len(policy.kms):
        return AbortCode.POLICY, ("downgrade_refused", f"peer asked for mode {m.mode.label}, "
                                  f"configured {policy.mode.label}")
    achieved = Achieved(sum(1 << i for i, k in enumerate(m.key_ids) if k), bool(m.mlkem_ek))
    try:
        check_achieved(policy, achieved)
    except PolicyError as exc:
        return AbortCode.POLICY, ("downgrade_refused", str(exc))
    if m.epoch <= highest:
        return AbortCode.STALE_EPOCH, None
    if m.epoch > epoch_bound(highest, last_attempt, synced=synced):
        return AbortCode.POLICY, ("epoch_refused", f"epoch {m.epoch} jumps too far ahead of "
                                  f"{highest}")
    if not spi_ok(policy, m.spi):
        return AbortCode.POLICY, None
    ids = [(kms, k) for kms, k in zip(policy.kms, m.key_ids, strict=True) if k]
    if any(used.seen(kms, k) or in_flight.get(kms) == k for kms, k in ids) or len(
            {k for _, k in ids}) != len(ids):
        return AbortCode.KEY_REUSE, ("key_reuse_refused", "peer offered a QKD key ID again")
    return None, None


def qkd_secrets(policy: TunnelPolicy, x: Exchange, mask: int) -> tuple[Secret | None, ...]:
    return tuple(x.qkd.get(k) if mask >> n & 1 else None for n, k in enumerate(policy.kms))


def offered_mask(init: RekeyInit) -> int:
    return sum(1 << n for n, k in enumerate(init.key_ids) if k)


def transcript(policy: TunnelPolicy, init: RekeyInit, resp: RekeyResp, initiator_sae: str,
               responder_sae: str) -> cb.RekeyTranscript:
    """Both ends build this from the two messages; QKD slots the responder could not fetch
    (mode "any" only, see ``RekeyResp.qkd_mask``) enter as left out."""
    ids = [i if resp.qkd_mask >> n & 1 else "" for n, i in enumerate(init.key_ids)]
    return cb.RekeyTranscript(
        policy.mode, policy.kind, init.epoch, initiator_sae, responder_sae, policy.name,
        tuple(cb.QkdSlot(k, i) for k, i in zip(policy.kms, ids, strict=True)),
        init.mlkem_ek, resp.mlkem_ct, init.x25519, resp.x25519, init.spi, resp.spi,
        init.nonce, resp.nonce)


def tunnel_keys(policy: TunnelPolicy, t: cb.RekeyTranscript, k: cb.SessionKeys, *,
                local_initiator: bool, spi_in: int, spi_out: int) -> TunnelKeys:
    """The exchange's outputs from this side's point of view (in = what we receive)."""
    return TunnelKeys(
        policy.mode.label, t.achieved.labels(policy),
        tuple(s.key_id for s in t.qkd if s.key_id), k.wg_psk,
        k.esp_r2i if local_initiator else k.esp_i2r, k.esp_i2r if local_initiator else k.esp_r2i,
        spi_in, spi_out)


def spi_ok(policy: TunnelPolicy, spi: int) -> bool:
    return spi == 0 if policy.kind is Kind.WIREGUARD else SPI_MIN <= spi < 2**32


def macs_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
