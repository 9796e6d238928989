"""Tunnel policies: which key sources a tunnel's keys must come from, and checking both ends agree.

Modes (X25519 is part of every mode; it costs 70 µs and guards against a broken ML-KEM or QKD
implementation):

=========  ===========================================  ==========================================
mode       inputs that MUST be present                  inputs left out (fixed markers instead)
=========  ===========================================  ==========================================
qkd+pqc    one QKD key from EVERY configured KMS path,  none                    (the default)
           ML-KEM-768, X25519
qkd        one QKD key from EVERY configured KMS path,  ML-KEM-768
           X25519
pqc        ML-KEM-768, X25519                           every QKD slot (the tunnel has no KMS)
any        ML-KEM-768, X25519                           each QKD path that could not deliver
=========  ===========================================  ==========================================

"any" is best effort: the rekey initiator includes every QKD path whose KMS delivered a key; the
achieved set travels in the (authenticated) rekey message, is bound into the transcript and is
reported in InstallKeys. Every other mode is exact: a set that differs by one input is refused,
there is no fallback. Both ends must configure the same mode, kind and KMS path list per tunnel.
Each side signs a digest of its whole list in the handshake (:func:`policy_digest`) and sends
the list itself in records after it (see machine.py / sync.py), so a mismatch (or a man in the
middle lowering either side) disables the tunnel with an Alarm instead of producing keys.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.protocol import labels
from gateway.protocol.constants import MAX_KMS_PER_TUNNEL
from gateway.protocol.errors import PolicyError, WireError
from gateway.protocol.wire import Reader, Writer

__all__ = [
    "Achieved",
    "Kind",
    "Mode",
    "TunnelPolicy",
    "check_achieved",
    "mismatch",
    "policy_digest",
    "reconcile",
]


class Mode(enum.IntEnum):
    QKD_PQC = 1
    QKD = 2
    PQC = 3
    ANY = 4

    @property
    def label(self) -> str:
        return {1: "qkd+pqc", 2: "qkd", 3: "pqc", 4: "any"}[self.value]

    @classmethod
    def parse(cls, text: str) -> Mode:
        for m in cls:
            if m.label == text:
                return m
        raise PolicyError(f"unknown mode {text!r}: use one of qkd+pqc, qkd, pqc, any")

    @property
    def uses_mlkem(self) -> bool:
        return self is not Mode.QKD


class Kind(enum.IntEnum):
    WIREGUARD = 1
    ESP = 2


@dataclass(frozen=True, slots=True)
class TunnelPolicy:
    """One tunnel as configured on this site: ``kms`` are the KMS path names, in combiner order."""

    name: str
    mode: Mode = Mode.QKD_PQC
    kms: tuple[str, ...] = ()
    kind: Kind = Kind.WIREGUARD

    def __post_init__(self) -> None:
        if len(self.kms) > MAX_KMS_PER_TUNNEL:
            raise PolicyError(f"tunnel {self.name!r}: at most {MAX_KMS_PER_TUNNEL} KMS paths")
        if len(set(self.kms)) != len(self.kms):
            raise PolicyError(f"tunnel {self.name!r}: a KMS path is listed twice")
        if self.mode is Mode.PQC and self.kms:
            raise PolicyError(f"tunnel {self.name!r}: mode pqc uses no KMS; remove the kms list")
        if self.mode in (Mode.QKD_PQC, Mode.QKD) and not self.kms:
            raise PolicyError(
                f"tunnel {self.name!r}: mode {self.mode.label} needs at least one kms path"
            )

    def encode(self, w: Writer) -> None:
        w.name(self.name).u8(self.mode).u8(self.kind).u8(len(self.kms))
        for k in self.kms:
            w.name(k)

    @classmethod
    def decode(cls, r: Reader) -> TunnelPolicy:
        name = r.name()
        try:
            mode, kind = Mode(r.u8()), Kind(r.u8())
        except ValueError:
            raise WireError("unknown mode or tunnel kind") from None
        n = r.u8()
        if n > MAX_KMS_PER_TUNNEL:
            raise WireError("too many KMS paths")
        kms = tuple(r.name() for _ in range(n))
        try:
            return cls(name, mode, kms, kind)
        except PolicyError as exc:
            raise WireError(str(exc)) from None


def policy_digest(policies: Iterable[TunnelPolicy]) -> bytes:
    """SHA-384 of one side's whole policy list towards a peer, in name order (the list's
    canonical form): signed in the handshake, checked against the list received afterwards."""
    ordered = sorted(policies, key=lambda p: p.name)
    w = Writer().blob(labels.TRANSCRIPT_POLICIES).u32(len(ordered))
    for p in ordered:
        p.encode(w)
    return hashlib.sha384(w.bytes()).digest()


def mismatch(local: TunnelPolicy, remote: TunnelPolicy | None) -> str | None:
    """Why ``local`` and the peer's ``remote`` policy of a tunnel differ (None: identical)."""
    if remote is None:
        return "peer has no such tunnel"
    if remote.mode is not local.mode:
        return f"mode mismatch: local {local.mode.label}, peer {remote.mode.label}"
    if remote.kind is not local.kind:
        return f"kind mismatch: local {local.kind.name}, peer {remote.kind.name}"
    if remote.kms != local.kms:
        return f"kms paths differ: local {list(local.kms)}, peer {list(remote.kms)}"
    return None


def reconcile(
    local: Sequence[TunnelPolicy], remote: Sequence[TunnelPolicy]
) -> tuple[list[TunnelPolicy], list[tuple[str, str]]]:
    """(tunnels both ends configured identically, [(tunnel, why it is disabled)])."""
    theirs = {p.name: p for p in remote}
    enabled: list[TunnelPolicy] = []
    refused: list[tuple[str, str]] = []
    for p in local:
        why = mismatch(p, theirs.pop(p.name, None))
        if why is None:
            enabled.append(p)
        else:
            refused.append((p.name, why))
    refused.extend((name, "not configured locally") for name in theirs)
    return enabled, refused


@dataclass(frozen=True, slots=True)
class Achieved:
    """What one rekey actually used: a bit per QKD path (combiner order) and ML-KEM."""

    qkd_mask: int
    mlkem: bool

    def labels(self, policy: TunnelPolicy) -> tuple[str, ...]:
        qkd = [f"qkd:{k}" for i, k in enumerate(policy.kms) if self.qkd_mask >> i & 1]
        return (*qkd, *(["ml-kem-768"] if self.mlkem else []), "x25519")


def check_achieved(policy: TunnelPolicy, achieved: Achieved) -> None:
    """Raise PolicyError unless ``achieved`` is exactly what ``policy.mode`` allows."""
    full = (1 << len(policy.kms)) - 1
    if achieved.qkd_mask & ~full:
        raise PolicyError(f"tunnel {policy.name!r}: QKD path bit outside the configured paths")
    mode = policy.mode
    if mode is Mode.QKD_PQC:
        ok = achieved.qkd_mask == full and achieved.mlkem
    elif mode is Mode.QKD:
        ok = achieved.qkd_mask == full and not achieved.mlkem
    elif mode is Mode.PQC:
        ok = achieved.qkd_mask == 0 and achieved.mlkem
    else:
        ok = achieved.mlkem
    if not ok:
        raise PolicyError(
            f"tunnel {policy.name!r}: inputs {achieved.labels(policy)} do not satisfy mode "
            f"{mode.label}"
        )
