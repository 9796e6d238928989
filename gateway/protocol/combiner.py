"""The key combiner: QKD keys, ML-KEM-768 and X25519 secrets + the transcript -> tunnel keys.

::

    inputs = ss_MLKEM, K_QKD_1, ..., K_QKD_n, ss_X25519   (each exactly 32 bytes; an input the
                                                            policy leaves out is a fixed public
                                                            marker, see labels.py)
    PRK_0  = REKEY_SALT
    PRK_j  = HKDF-Extract-SHA-384(salt = PRK_(j-1), IKM = inputs[j])   for j = 1 .. n+2
    th     = SHA-384(length-prefixed transcript, see RekeyTranscript.encode)
    out    = HKDF-Expand-SHA-384(PRK_(n+2), info = <purpose label> || th, L)

A cascade of one Extract per input, as TLS 1.3's key schedule and RFC 9370's additional key
exchanges chain theirs. Each step is HMAC(key = previous PRK, message = the input): its output is
pseudorandom if the previous PRK is (HMAC is a PRF in its key) OR if the input is uniform and
unknown (HMAC is a PRF in its message input: the dual-PRF assumption that the TLS 1.3 analyses
make for HKDF-Extract). By induction the final PRK is pseudorandom while ANY one input is (a QKD
key alone, the ML-KEM secret alone, or the X25519 secret alone), under standard assumptions and
without a random oracle (one Extract over the concatenation would need the random-oracle model:
the dual-PRF assumption covers a uniform key, not a uniform 32-byte piece of a longer one).
ML-KEM's secret goes first (SP 800-56C: an approved secret opens the derivation). The transcript
carries the ML-KEM encapsulation key and ciphertext and both X25519 publics (SP 800-227: bind the
KEM's public values), the mode and the achieved set (no silent downgrade), every KMS path and key
ID, both SPIs and nonces, so each output is bound to exactly one exchange.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from gateway.keymaterial import Secret
from gateway.protocol import labels
from gateway.protocol.constants import QKD_KEY_LEN, SUITE_ID
from gateway.protocol.errors import PolicyError
from gateway.protocol.policy import Achieved, Kind, Mode
from gateway.protocol.wire import Writer

__all__ = [
    "ESP_KEYMAT_LEN",
    "CombinerSecrets",
    "QkdSlot",
    "RekeyTranscript",
    "SessionKeys",
    "combine",
    "confirm_mac",
    "extract_chain",
]

WG_PSK_LEN = 32
# RFC 4106: AES-256 key (32 B) followed by the 4-byte salt; XFRM takes it as one 288-bit key.
ESP_KEYMAT_LEN = 36
CONFIRM_KEY_LEN = 48
KEY_CHECK_LEN = 16


@dataclass(frozen=True, slots=True)
class QkdSlot:
    """One KMS path in combiner order; ``key_id`` is empty when the path is left out."""

    kms: str
    key_id: str = ""


@dataclass(frozen=True, slots=True)
class RekeyTranscript:
    """Every public value of one rekey; both ends build it identically."""

    mode: Mode
    kind: Kind
    epoch: int
    initiator_sae: str
    responder_sae: str
    tunnel: str
    qkd: tuple[QkdSlot, ...]
    mlkem_ek: bytes
    mlkem_ct: bytes
    x25519_i: bytes
    x25519_r: bytes
    spi_i: int
    spi_r: int
    nonce_i: bytes
    nonce_r: bytes

    @property
    def achieved(self) -> Achieved:
        mask = sum(1 << i for i, s in enumerate(self.qkd) if s.key_id)
        return Achieved(mask, bool(self.mlkem_ct))

    def encode(self) -> bytes:
        w = Writer().blob(labels.TRANSCRIPT_REKEY).u16(SUITE_ID)
        w.u8(self.mode).u8(self.kind).u64(self.epoch)
        w.blob(self.initiator_sae.encode()).blob(self.responder_sae.encode())
        w.blob(self.tunnel.encode()).u8(len(self.qkd))
        for slot in self.qkd:
            w.blob(slot.kms.encode()).blob(slot.key_id.encode())
        w.blob(self.mlkem_ek).blob(self.mlkem_ct)
        w.blob(self.x25519_i).blob(self.x25519_r)
        w.u32(self.spi_i).u32(self.spi_r)
        w.blob(self.nonce_i).blob(self.nonce_r)
        return w.bytes()

    def hash(self) -> bytes:
        return hashlib.sha384(self.encode()).digest()


@dataclass(frozen=True, slots=True)
class CombinerSecrets:
    """The secret inputs. ``qkd[i]`` is None exactly when slot i is left out."""

    mlkem_ss: Secret | None
    qkd: tuple[Secret | None, ...]
    x25519_ss: Secret


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Outputs of one rekey. Directions are the rekey's: i = the side that sent RekeyInit.

    ``key_check`` is public: a fingerprint of this epoch's keys for keepalives."""

    wg_psk: Secret
    esp_i2r: Secret
    esp_r2i: Secret
    confirm_i: Secret
    confirm_r: Secret
    transcript_hash: bytes
    key_check: bytes


def extract_chain(salt: bytes, inputs: list[bytes]) -> bytes:
    """PRK after one HKDF-Extract per input: PRK_j = HMAC-SHA-384(PRK_(j-1), inputs[j]), with
    PRK_0 = ``salt`` (HKDF-Extract is HMAC(salt, IKM), RFC 5869 section 2.2)."""
    prk = salt
    for ikm in inputs:
        prk = hmac.new(prk, ikm, hashlib.sha384).digest()
    return prk


def _inputs(secrets: CombinerSecrets, t: RekeyTranscript) -> list[bytes]:
    if len(secrets.qkd) != len(t.qkd):
        raise PolicyError("number of QKD keys differs from the number of KMS paths")
    parts = [secrets.mlkem_ss.reveal() if secrets.mlkem_ss is not None else labels.ABSENT_MLKEM_SS]
    if (secrets.mlkem_ss is None) != (not t.mlkem_ct):
        raise PolicyError("ML-KEM secret present iff the transcript carries a ciphertext")
    for key, slot in zip(secrets.qkd, t.qkd, strict=True):
        if (key is None) != (not slot.key_id):
            raise PolicyError(f"QKD key for path {slot.kms!r} present iff its key ID is")
        if key is not None and len(key) != QKD_KEY_LEN:
            raise PolicyError(f"QKD key from {slot.kms!r} is {len(key) * 8} bits, need 256")
        parts.append(key.reveal() if key is not None else labels.ABSENT_QKD_KEY)
    parts.append(secrets.x25519_ss.reveal())
    if any(len(p) != 32 for p in parts):
        raise PolicyError("every combiner input must be 32 bytes")
    return parts


def _expand(prk: bytes, label: bytes, th: bytes, length: int) -> Secret:
    return Secret(HKDFExpand(hashes.SHA384(), length, label + th).derive(prk))


def combine(secrets: CombinerSecrets, transcript: RekeyTranscript) -> SessionKeys:
    th = transcript.hash()
    prk = extract_chain(labels.REKEY_SALT, _inputs(secrets, transcript))
    return SessionKeys(
        wg_psk=_expand(prk, labels.REKEY_WG_PSK, th, WG_PSK_LEN),
        esp_i2r=_expand(prk, labels.REKEY_ESP_I2R, th, ESP_KEYMAT_LEN),
        esp_r2i=_expand(prk, labels.REKEY_ESP_R2I, th, ESP_KEYMAT_LEN),
        confirm_i=_expand(prk, labels.REKEY_CONFIRM_I, th, CONFIRM_KEY_LEN),
        confirm_r=_expand(prk, labels.REKEY_CONFIRM_R, th, CONFIRM_KEY_LEN),
        transcript_hash=th,
        key_check=_expand(prk, labels.REKEY_KEY_CHECK, th, KEY_CHECK_LEN).reveal(),
    )


def confirm_mac(key: Secret, transcript_hash: bytes) -> bytes:
    """Key confirmation: HMAC-SHA-384 under a confirmation key over the transcript hash."""
    return hmac.new(key.reveal(), transcript_hash, hashlib.sha384).digest()
