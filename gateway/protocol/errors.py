"""Errors of the peer protocol. Every failure the core can meet is one of these::

    ProtocolError                 base; .reason is a short snake_case code for logs and metrics
    ├── WireError                 a frame or message that does not parse (closes the connection)
    │   ├── FrameTooLarge         header announces more than MAX_FRAME
    │   └── UnsupportedVersion    wire version other than ours
    ├── AuthError                 authentication failed (closes the connection)
    │   ├── UnknownPeer           SAE ID not in the pinned peer list
    │   ├── BadSignature          Ed25519 or ML-DSA-65 signature did not verify
    │   ├── BadMac                key confirmation MAC did not verify
    │   ├── StaleHello            Hello timestamp outside the clock window or not newer than the
    │   │                         last accepted one from that peer (a replay)
    │   └── ReplayError           record sequence number or AEAD tag wrong
    ├── PolicyError               a tunnel's policy cannot be met (fails that tunnel closed)
    └── StateError                a valid message that is not allowed in the current state

Messages never contain key bytes; they may quote names (SAE IDs, tunnels), never secrets.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadMac",
    "BadSignature",
    "FrameTooLarge",
    "PolicyError",
    "ProtocolError",
    "ReplayError",
    "StaleHello",
    "StateError",
    "UnknownPeer",
    "UnsupportedVersion",
    "WireError",
]


class ProtocolError(Exception):
    """Base of all protocol errors."""

    reason = "protocol_error"


class WireError(ProtocolError):
    reason = "malformed"


class FrameTooLarge(WireError):
    reason = "frame_too_large"


class UnsupportedVersion(WireError):
    reason = "unsupported_version"


class AuthError(ProtocolError):
    reason = "auth_failed"


class UnknownPeer(AuthError):
    reason = "unknown_peer"


class BadSignature(AuthError):
    reason = "bad_signature"


class BadMac(AuthError):
    reason = "bad_mac"


class StaleHello(AuthError):
    reason = "stale_hello"


class ReplayError(AuthError):
    reason = "bad_record"


class PolicyError(ProtocolError):
    reason = "policy"


class StateError(ProtocolError):
    reason = "unexpected_message"
