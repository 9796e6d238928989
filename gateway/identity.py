"""Site identities: an Ed25519 and an ML-DSA-65 key pair per site.

Both signatures must verify for a peer to be accepted (a hybrid signature: the handshake stays
authentic while either algorithm holds). Private keys live in PEM (PKCS#8) files with mode 0600,
written by ``qkd-gateway keygen`` and read from a path or a systemd credential. Public keys are
pinned in each peer's configuration as base64 of the raw encodings.

Files in a key directory::

    ed25519.key  mldsa65.key     private keys, PEM PKCS#8, mode 0600
    ed25519.pub  mldsa65.pub     base64 of the raw public keys, one line each
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "ED25519_PUBLIC_LEN",
    "MLDSA65_PUBLIC_LEN",
    "IdentityError",
    "PeerPublicKeys",
    "SiteIdentity",
]

ED25519_PUBLIC_LEN = 32
MLDSA65_PUBLIC_LEN = 1952
ED25519_SIGNATURE_LEN = 64
MLDSA65_SIGNATURE_LEN = 3309


class IdentityError(ValueError):
    """A key file or public key that cannot be used; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class PeerPublicKeys:
    """A peer's pinned public keys (raw encodings)."""

    ed25519: bytes
    mldsa65: bytes

    def __post_init__(self) -> None:
        if len(self.ed25519) != ED25519_PUBLIC_LEN:
            raise IdentityError(f"an Ed25519 public key is {ED25519_PUBLIC_LEN} bytes")
        if len(self.mldsa65) != MLDSA65_PUBLIC_LEN:
            raise IdentityError(f"an ML-DSA-65 public key is {MLDSA65_PUBLIC_LEN} bytes")

    @classmethod
    def from_base64(cls, ed25519_b64: str, mldsa65_b64: str) -> PeerPublicKeys:
        try:
            ed = base64.b64decode(ed25519_b64, validate=True)
            ml = base64.b64decode(mldsa65_b64, validate=True)
        except binascii.Error as exc:
            raise IdentityError(
                "public key is not valid base64; copy it from `qkd-gateway keygen` output"
            ) from exc
        return cls(ed, ml)

    def to_base64(self) -> tuple[str, str]:
        return base64.b64encode(self.ed25519).decode(), base64.b64encode(self.mldsa65).decode()

    @property
    def fingerprint(self) -> str:
        """Short, stable, loggable name for this identity (SHA-256 over both keys, 16 hex)."""
        return hashlib.sha256(self.ed25519 + self.mldsa65).hexdigest()[:16]

    def verify(self, data: bytes, ed25519_sig: bytes, mldsa65_sig: bytes, context: bytes) -> bool:
        """True only when BOTH signatures verify over ``data`` (``context`` binds the purpose)."""
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.ed25519).verify(
                ed25519_sig, context + data
            )
            mldsa.MLDSA65PublicKey.from_public_bytes(self.mldsa65).verify(
                mldsa65_sig, data, context
            )
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class SiteIdentity:
    """This site's private keys. Its repr names only the public fingerprint."""

    ed25519: ed25519.Ed25519PrivateKey
    mldsa65: mldsa.MLDSA65PrivateKey

    def __repr__(self) -> str:
        return f"SiteIdentity(fingerprint={self.public().fingerprint})"

    @classmethod
    def generate(cls) -> SiteIdentity:
        return cls(ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate())

    def public(self) -> PeerPublicKeys:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return PeerPublicKeys(
            self.ed25519.public_key().public_bytes(*raw),
            self.mldsa65.public_key().public_bytes(*raw),
        )

    def sign(self, data: bytes, context: bytes) -> tuple[bytes, bytes]:
        """(Ed25519 signature over context||data, ML-DSA-65 signature over data with context)."""
        return self.ed25519.sign(context + data), self.mldsa65.sign(data, context)

    # -- files -------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write private keys (0600) and ``.pub`` files; refuses to overwrite existing keys."""
        directory.mkdir(parents=True, exist_ok=True)
        pem = (
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for name, key in (("ed25519", self.ed25519), ("mldsa65", self.mldsa65)):
            path = directory / f"{name}.key"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(*pem))
        ed_b64, ml_b64 = self.public().to_base64()
        (directory / "ed25519.pub").write_text(ed_b64 + "\n")
        (directory / "mldsa65.pub").write_text(ml_b64 + "\n")

    @classmethod
    def load(cls, ed25519_path: Path, mldsa65_path: Path) -> SiteIdentity:
        ed = _load_private(ed25519_path, "Ed25519")
        if not isinstance(ed, ed25519.Ed25519PrivateKey):
            raise IdentityError(f"{ed25519_path} does not hold an Ed25519 private key")
        ml = _load_private(mldsa65_path, "ML-DSA-65")
        if not isinstance(ml, mldsa.MLDSA65PrivateKey):
            raise IdentityError(f"{mldsa65_path} does not hold an ML-DSA-65 private key")
        return cls(ed, ml)


def _load_private(path: Path, label: str) -> PrivateKeyTypes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(
            f"could not find {label} private key file {path}: "
            "consider running `qkd-gateway keygen --out-dir DIR`"
        ) from None
    except PermissionError:
        raise IdentityError(
            f"cannot read {label} private key file {path}: permission denied"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The message deliberately omits the parser's text: it could quote key bytes.
        raise IdentityError(f"{path} is not a PEM {label} private key") from None
    return key
