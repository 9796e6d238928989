"""Every protocol constant, limit and timer in one place, each with the reason for its value.

Timers are defaults; :class:`Timers` lets the daemon (and fast tests) scale them together.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CONNECT_BURST",
    "CONNECT_RATE",
    "DEFAULT_PORT",
    "EPOCH_CEILING",
    "HEADER_LEN",
    "HELLO_MAX_SKEW",
    "KEYCHECK_MAX_ENTRIES",
    "MAX_CONCURRENT_EXCHANGES",
    "MAX_EPOCH_STEP",
    "MAX_FRAME",
    "MAX_KMS_PER_TUNNEL",
    "MAX_NAME_LEN",
    "MAX_PAYLOAD",
    "MAX_PENDING_PER_SOURCE",
    "MAX_PENDING_UNAUTHENTICATED",
    "MAX_TRACKED_SOURCES",
    "MAX_TUNNELS_PER_PEER",
    "NONCE_LEN",
    "POLICY_CHUNK_BYTES",
    "QKD_KEY_LEN",
    "RESERVED_PER_PEER",
    "SPARE_KEY_MAX_AGE",
    "SPI_MIN",
    "STOP_NOTICE_TUNNEL",
    "SUITE_ID",
    "USED_KEY_ID_MEMORY",
    "WIRE_VERSION",
    "Timers",
    "TransportLimits",
]

# -- wire ------------------------------------------------------------------------------------
# TCP port of the peer protocol. 7447 is unassigned by IANA and sits next to nothing common on
# site routers; operators override it per peer in the config.
DEFAULT_PORT = 7447

# Frame header: version (1) || type (1) || payload length (2, big endian).
HEADER_LEN = 4
# Version 2: signed, timestamped Hello (cheap pre-authentication filter), policy lists out of the
# handshake (a signed digest in it, the list in records), cascaded combiner, acknowledged
# confirmation and key-check keepalives. Version 1 peers are refused by the frame header.
WIRE_VERSION = 2

# The largest legitimate frame is the handshake reply: ML-KEM-768 ciphertext (1088 B) + ML-DSA-65
# signature (3309 B) + Ed25519 signature (64 B) + small fields, ~4.6 KiB; a policy-list record is
# cut at POLICY_CHUNK_BYTES. 16 KiB leaves headroom while bounding what one peer can make us
# buffer; the header's length is checked against it BEFORE any payload is buffered.
MAX_FRAME = 16 * 1024
MAX_PAYLOAD = MAX_FRAME - HEADER_LEN

# Names (SAE IDs, tunnel names, KMS names) are config identifiers; ETSI 014 SAE IDs are short.
MAX_NAME_LEN = 64
# Tunnels between two sites. The handshake carries only a digest of each side's policy list; the
# lists travel in records after it, so this bounds memory (~330 B per worst-case policy, ~5 MiB),
# not a frame. Issue 12's scale target is 10,000 tunnels between two gateways.
MAX_TUNNELS_PER_PEER = 16384
# A policy-list record carries at most this many bytes of policies (a 12 KiB record fits a frame
# with its header, sequence number and tag; ~40 worst-case or ~300 typical policies).
POLICY_CHUNK_BYTES = 12 * 1024
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

# The tunnel name of the stop notice (RekeyAbort SHUTDOWN, epoch 0) a stopping daemon sends each
# peer: not a valid configured tunnel name (those start with a letter or digit), so it can never
# be taken for a tunnel's abort.
STOP_NOTICE_TUNNEL = "*"

# -- pre-authentication limits (the transport's admission control) ---------------------------
# Connections that have not finished their handshake, over all sources. Each costs a buffer of at
# most MAX_FRAME (~4 MiB for all); legitimate ones are a handful (one per peer dialling us).
MAX_PENDING_UNAUTHENTICATED = 256
# ... from one source (an IPv4 address, or an IPv6 /64: one host owns a whole /64). A peer
# dials one connection at a time; 4 leaves room for a reconnect overlapping a dying attempt.
MAX_PENDING_PER_SOURCE = 4
# Slots per configured peer address that no other source can take, outside the global cap: a
# flood from elsewhere cannot lock out a pinned peer's dial.
RESERVED_PER_PEER = 2
# New connections a source may open: a token bucket, CONNECT_RATE per second with bursts of
# CONNECT_BURST (WireGuard's handshake rate limiter: 20/s, burst 5, when under load). A peer
# redials with a backoff of >= 0.5 s, far below. Refused connections are reset before a byte is
# read, so a flood costs the loop an accept and a close each.
CONNECT_RATE = 5.0
CONNECT_BURST = 10.0
# Remembered sources (token buckets) at most; full buckets are forgotten first.
MAX_TRACKED_SOURCES = 16384

# Once a tunnel has completed an exchange in this process, a peer's epoch may run ahead of the
# highest one seen by at most this much (aborted attempts and collisions skip numbers). Bounds
# what a faulty peer can do to the u64 epoch space: without it one RekeyInit with epoch 2**64-1
# would leave no next epoch.
MAX_EPOCH_STEP = 1 << 20
# Before that first exchange our own epoch knowledge may be stale (restart, lost or old state
# file), so the peer's epoch is adopted however far ahead, up to this absolute ceiling: a hostile
# peer can push us at most to 2**62 once, which still leaves 3 * 2**62 epochs (never exhausted).
EPOCH_CEILING = 1 << 62

# Used QKD key IDs remembered per (peer, KMS) to refuse a peer that re-sends one (each key is
# used once; the KMS enforces it too, this catches a misbehaving peer before a fetch). The memory
# of a (peer, KMS) pair holds at least this many IDs, or 4 per tunnel sharing the pair.
USED_KEY_ID_MEMORY = 4096

# QKD keys taken for an attempt that was dropped before the peer could have fetched them (the
# attempt was aborted while gathering, lost a collision, or was refused before the fetch) are
# kept for the next attempt instead of being wasted; older ones are dropped (KMEs may expire
# undelivered keys).
SPARE_KEY_MAX_AGE = 300.0

# Rekey exchanges this side runs as initiator towards one peer at once; more due tunnels wait
# their turn. With 10,000 tunnels a session start would otherwise ask the KMS for 10,000 keys
# and queue ~13 MB of RekeyInit records in one go. 64 in flight saturate a KMS at ~5 ms a call.
MAX_CONCURRENT_EXCHANGES = 64

# A keepalive carries at most this many (tunnel, epoch, key check) entries (~6 KiB): first the
# activations still waiting for their acknowledgement, then a round-robin over the other tunnels.
KEYCHECK_MAX_ENTRIES = 64

# A Hello's timestamp may differ from the responder's wall clock by at most this much; outside
# it, the Hello is refused before any expensive work (a captured Hello goes stale after this).
# Gateways need roughly correct clocks anyway (TLS certificates of the KMS); 10 min is lenient.
HELLO_MAX_SKEW = 600.0


@dataclass(frozen=True, slots=True)
class Timers:
    """Protocol timers in seconds. Defaults cite their reasons; tests shrink them."""

    # Whole handshake (Hello..Finish) must complete in this time, or the connection is cut: a
    # silent or byte-trickling peer cannot hold a pending slot longer. 10 s covers two round trips
    # over a congested WAN plus ~2 ms of signing.
    handshake_timeout: float = 10.0
    # An accepted connection must deliver its whole Hello within this time, or it is cut: the
    # initiator sends it right after connecting, so an idle pre-authentication connection frees
    # its slot after 3 s, not 10 (one WAN round trip plus a congested send fits easily).
    hello_timeout: float = 3.0
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
    # A clean stop (SIGTERM): the daemon starts no exchange, tells its peers so, and lets the
    # exchanges in flight finish for at most this long before it closes its sessions (one
    # exchange is two round trips and two KMS calls: ~50 ms on a LAN, a few seconds on a slow
    # WAN or KMS; systemd waits 90 s for a stop). What is still running then is discarded with
    # reason "shutdown" here and "peer_shutdown" at the peer.
    shutdown_drain: float = 5.0


class TransportLimits:
    """Limits and timers of the TCP transport (transport.py)."""

    # Unread output tolerated before a peer counts as not reading: small before authentication;
    # in a session enough for a whole policy list (MAX_TUNNELS_PER_PEER) plus a burst of rekeys.
    WRITE_LIMIT_PENDING = 4 * MAX_FRAME
    WRITE_LIMIT_SESSION = 16 * 1024 * 1024
    # The loop timer fires this much after the deadline it serves, so the core sees now >= it.
    TIMER_SLACK = 0.001
    # TCP connect to a peer, and DNS of a peer's host name: a WAN round trip fits many times.
    CONNECT_TIMEOUT = 5.0
    RESOLVE_TIMEOUT = 5.0
    # Redial after a failed or short-lived connection: 0.5 s doubling to 30 s, 50-100 % jitter.
    DIAL_BACKOFF_BASE = 0.5
    DIAL_BACKOFF_CAP = 30.0
    # Listen backlog: a burst of legitimate reconnects and a flood both queue here; the accept
    # loop drains at most ACCEPT_BATCH per readiness event so the rest of the loop keeps its turn.
    BACKLOG = 1024
    ACCEPT_BATCH = 64
    # Pre-authentication refusals and closes are summed up in one log line at most this often.
    SUMMARY_INTERVAL = 10.0
