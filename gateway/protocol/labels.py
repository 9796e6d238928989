"""Every domain-separation string of the protocol: KDF labels, signature contexts, markers.

One file so that a reviewer can check at a glance that no two purposes share a label. Each label
starts with the protocol id, so keys of this protocol can never collide with another's.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ABSENT_MLKEM_SS",
    "ABSENT_QKD_KEY",
    "CTX_SIGN_HELLO",
    "CTX_SIGN_INITIATOR",
    "CTX_SIGN_RESPONDER",
    "PROTOCOL_ID",
    "REKEY_CONFIRM_I",
    "REKEY_CONFIRM_R",
    "REKEY_ESP_I2R",
    "REKEY_ESP_R2I",
    "REKEY_KEY_CHECK",
    "REKEY_SALT",
    "REKEY_WG_PSK",
    "SESSION_CONFIRM_I",
    "SESSION_CONFIRM_R",
    "SESSION_SALT",
    "SESSION_TRAFFIC_I2R",
    "SESSION_TRAFFIC_R2I",
    "TRANSCRIPT_POLICIES",
    "TRANSCRIPT_REKEY",
    "TRANSCRIPT_SESSION",
]

PROTOCOL_ID = b"qkd-gateway/2"

# -- control session (handshake) -------------------------------------------------------------
SESSION_SALT = PROTOCOL_ID + b" session extract"
SESSION_TRAFFIC_I2R = PROTOCOL_ID + b" session traffic i->r"
SESSION_TRAFFIC_R2I = PROTOCOL_ID + b" session traffic r->i"
SESSION_CONFIRM_I = PROTOCOL_ID + b" session confirm initiator"
SESSION_CONFIRM_R = PROTOCOL_ID + b" session confirm responder"
# Signature contexts (ML-DSA context string; prefixed for Ed25519): a responder signature can
# never be replayed as an initiator one, nor any other signature of the site keys used here.
CTX_SIGN_INITIATOR = PROTOCOL_ID + b" sign initiator"
CTX_SIGN_RESPONDER = PROTOCOL_ID + b" sign responder"
# The initiator's Ed25519 signature over its Hello: a cheap pre-authentication filter (only a
# pinned peer can make the responder do the expensive part of the handshake).
CTX_SIGN_HELLO = PROTOCOL_ID + b" sign hello"
# The digest of one side's tunnel policy list, signed inside the handshake transcript.
TRANSCRIPT_POLICIES = PROTOCOL_ID + b" policy list"
TRANSCRIPT_SESSION = PROTOCOL_ID + b" session transcript"

# -- per-tunnel rekey (the combiner) ---------------------------------------------------------
REKEY_SALT = PROTOCOL_ID + b" rekey extract"
REKEY_WG_PSK = PROTOCOL_ID + b" wireguard psk"
REKEY_ESP_I2R = PROTOCOL_ID + b" esp aes256gcm16 i->r"
REKEY_ESP_R2I = PROTOCOL_ID + b" esp aes256gcm16 r->i"
REKEY_CONFIRM_I = PROTOCOL_ID + b" rekey confirm initiator"
REKEY_CONFIRM_R = PROTOCOL_ID + b" rekey confirm responder"
# A public 16-byte fingerprint of an epoch's keys, sent in keepalives so both ends can see that
# they run the same epoch with the same keys (a PRF output under its own label: it reveals
# nothing about the other outputs).
REKEY_KEY_CHECK = PROTOCOL_ID + b" rekey key check"
TRANSCRIPT_REKEY = PROTOCOL_ID + b" rekey transcript"

# Fixed-length stand-ins for inputs the policy leaves out. Public constants: they add no secrecy
# (the mode and achieved set in the transcript are what stop a downgrade); they keep Z' at a
# fixed layout so that no two input sets can produce the same byte string.
ABSENT_QKD_KEY = hashlib.sha256(PROTOCOL_ID + b" absent qkd key").digest()
ABSENT_MLKEM_SS = hashlib.sha256(PROTOCOL_ID + b" absent ml-kem shared secret").digest()
