"""Every protocol constant, limit and timer in one place, each with the reason for its value.

Timers are defaults; :class:`Timers` lets the daemon (and fast tests) scale them together.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_PORT",
    "HEADER_LEN",
    "MAX_EPOCH_STEP",
    "MAX_FRAME",
    "MAX_KMS_PER_TUNNEL",
    "MAX_NAME_LEN",
    "MAX_PAYLOAD",
    "MAX_PENDING_UNAUTHENTICATED",
    "MAX_TUNNELS_PER_PEER",
    "NONCE_LEN",
    "QKD_KEY_LEN",
    "SPI_MIN",
    "SUITE_ID",
    "WIRE_VERSION",
    "Timers",
]

# -- wire ------------------------------------------------------------------------------------
# TCP port of the peer protocol. 7447 is unassigned by IANA and sits next to nothing common on
# site routers; operators override it per peer in the config.
DEFAULT_PORT = 7447

# Frame header: version (1) || type (1) || payload length (2, big endian).
HEADER_LEN = 4
WIRE_VERSION = 1

# The largest legitimate frame is the handshake reply: ML-KEM-768 ciphertext (1088 B) + ML-DSA-65
# signature (3309 B) + Ed25519 signature (64 B) + policy list (<= 16 tunnels * ~330 B) + small
# fields, well under 12 KiB. 16 KiB leaves headroom while bounding what one peer can make us
# buffer; the header's length is checked against it BEFORE any payload is buffered.
MAX_FRAME = 16 * 1024
MAX_PAYLOAD = MAX_FRAME - HEADER_LEN

# Names (SAE IDs, tunnel names, KMS names) are config identifiers; ETSI 014 SAE IDs are short.
MAX_NAME_LEN = 64
# Bounds the policy list in the handshake (see MAX_FRAME).
MAX_TUNNELS_PER_PEER = 16
# Multipath QKD: one key per KMS path enters the combiner; more than 4 disjoint trusted-node
# paths between two sites is beyond any deployed QKD network.
MAX_KMS_PER_TUNNEL = 4

# The one cipher suite of wire version 1: ML-KEM-768 + X25519 key exchange, Ed25519 + ML-DSA-65
# signatures, AES-256-GCM records, SHA-384/HKDF-SHA-384. A new suite means a new id; there is no
# negotiation inside a version, so there is nothing to downgrade.
SUITE_ID = 0x0001

NONCE_LEN = 32
# QKD keys enter the combiner at a fixed length (256 bits, the ETSI 014 default key size), so the
# concatenation Z' is unambiguous without length prefixes.
QKD_KEY_LEN = 32
# IPsec SPIs 0-255 are reserved by IANA (RFC 4303 section 2.1); the kernel's ALLOCSPI honours it.
SPI_MIN = 256

# Pending (not yet authenticated) connections the transport admits at once. Each costs one
# ML-KEM encapsulation and a buffer of at most MAX_FRAME; 32 bounds memory to ~0.5 MiB and CPU
# while leaving room for a burst of legitimate reconnects after a router reboot.
MAX_PENDING_UNAUTHENTICATED = 32

# An epoch may run ahead of the last one seen by at most this much (aborted attempts and
# collisions skip numbers). Bounds what a faulty peer can do to the u64 epoch space: without it
# one RekeyInit with epoch 2**64-1 would leave no next epoch.
MAX_EPOCH_STEP = 1 << 20

# Used QKD key IDs remembered to refuse a peer that re-sends one (each key is used once; the KMS
# enforces it too, this catches a misbehaving peer before a fetch).
USED_KEY_ID_MEMORY = 4096


@dataclass(frozen=True, slots=True)
class Timers:
    """Protocol timers in seconds. Defaults cite their reasons; tests shrink them."""

    # Whole handshake (Hello..Finish) must complete in this time, or the connection is cut: a
    # silent or byte-trickling peer cannot hold a pending slot longer. 10 s covers two round trips
    # over a congested WAN plus ~2 ms of signing.
    handshake_timeout: float = 10.0
    # Re-authenticate (new handshake, new signatures, new session keys) on this interval, like
    # IKEv2's reauth_time (strongSwan default 3 h, we take 4 h): signatures are per session, not per
    # rekey (ML-DSA-65 signing ~0.8 ms is 2/3 of a dual-signed rekey).
    reauth_interval: float = 4 * 3600.0
    # WireGuard's REKEY_AFTER_TIME (120 s) and Rosenpass' responder rekey: the preferred side
    # (lower SAE ID) rekeys every 120 s ...
    rekey_after: float = 120.0
    # ... and the other side steps in 10 s later (Rosenpass: 130 s) only if nothing happened,
    # which keeps rekey collisions rare without leaving a single point of failure.
    rekey_after_backup: float = 130.0
    # WireGuard's REJECT_AFTER_TIME (180 s), also Rosenpass': a key not replaced by then is
    # expired and the daemon installs a random PSK / removes the SA (fail closed).
    reject_after: float = 180.0
    # One rekey exchange (KMS take/fetch, both derivations, confirmation) must finish within this,
    # or it is aborted and its QKD keys discarded. ETSI 014 calls are bounded by the KMS client's
    # own timeouts (10 s); 30 s allows a retry on each side.
    rekey_timeout: float = 30.0
    # Retry backoff after an aborted rekey: 1 s doubling to 30 s, +-20 % jitter, so that a KMS
    # outage is not hammered and the retries of many tunnels do not synchronise.
    retry_base: float = 1.0
    retry_cap: float = 30.0
    retry_jitter: float = 0.2
    # Keepalive on an idle session; a session silent for dead_after is declared lost (TCP may not
    # notice a dead peer for many minutes). 3 missed keepalives, like BFD's detect multiplier.
    keepalive_interval: float = 10.0
    dead_after: float = 30.0
    # After Activate, the previous epoch's inbound SA is kept this long for packets in flight,
    # then Retire is emitted (make-before-break's "break").
    retire_grace: float = 10.0
