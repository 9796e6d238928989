"""`qkd-gateway keygen --out-dir DIR [--wireguard]`: a site identity (and a WireGuard key).

Writes ``ed25519.key`` and ``mldsa65.key`` (PEM, 0600) with their ``.pub`` files, and with
``--wireguard`` also ``wireguard.key`` (base64, 0600, like ``wg genkey``) and ``wireguard.pub``.
Refuses to overwrite any existing key: checked for every file before the first is written, so a
refusal leaves the directory as it was.

Standard output is valid YAML: the ``public_keys:`` block a peer's configuration takes, with
everything else as comments, so ``qkd-gateway keygen ... > site.pub.yaml`` is usable as is.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from gateway.identity import SiteIdentity

__all__ = ["identity_files", "register", "run", "write_wireguard_key"]

IDENTITY_FILES = ("ed25519.key", "mldsa65.key", "ed25519.pub", "mldsa65.pub")
WIREGUARD_FILES = ("wireguard.key", "wireguard.pub")


def identity_files(directory: Path, wireguard: bool) -> list[Path]:
    """Every file keygen writes into ``directory``."""
    names = IDENTITY_FILES + (WIREGUARD_FILES if wireguard else ())
    return [directory / n for n in names]


def write_wireguard_key(directory: Path) -> str:
    """Write ``wireguard.key`` (0600, refuses to overwrite) and ``wireguard.pub``; return the
    public key in base64."""
    raw = bytearray(os.urandom(32))
    # Clamped as `wg genkey` does, so the file is byte-for-byte what WireGuard tools produce.
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    private = x25519.X25519PrivateKey.from_private_bytes(bytes(raw))
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    fd = os.open(directory / "wireguard.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(bytes(raw)).decode() + "\n")
    public_b64 = base64.b64encode(public).decode()
    (directory / "wireguard.pub").write_text(public_b64 + "\n")
    return public_b64


def register(sub: Any) -> None:
    p = sub.add_parser(
        "keygen",
        help="generate this site's identity keys (and a WireGuard key)",
        description="Generate an Ed25519 + ML-DSA-65 site identity into DIR (private keys mode "
        "0600, never overwritten) and print the public_keys: block peers put in their config.",
    )
    p.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                   help="directory for the key files (created with mode 0700 if missing)")
    p.add_argument("--wireguard", action="store_true",
                   help="also write a WireGuard private key (wireguard.key) and its .pub")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    directory: Path = args.out_dir
    existing = [p for p in identity_files(directory, args.wireguard) if p.exists()]
    if existing:
        print(f"qkd-gateway keygen: refusing to overwrite {existing[0]}"
              f"{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
              "choose another --out-dir or move the old keys away first", file=sys.stderr)
        return 1
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = SiteIdentity.generate()
        identity.save(directory)
        wg_public = write_wireguard_key(directory) if args.wireguard else None
    except OSError as exc:
        print(f"qkd-gateway keygen: cannot write to {directory}: {exc.strerror}", file=sys.stderr)
        return 1
    public = identity.public()
    ed_b64, ml_b64 = public.to_base64()
    print(f"# site identity written to {directory} (fingerprint {public.fingerprint})")
    print("# peers of this site put this block under their `peers:` entry for it:")
    print("public_keys:")
    print(f"  ed25519: {ed_b64}")
    print(f"  mldsa65: {ml_b64}")
    if wg_public is not None:
        print(f"# WireGuard private key written to {directory / 'wireguard.key'}")
        print("# the peer's tunnel to this site takes its public key as:")
        print(f"#   peer_public_key: {wg_public}")
    return 0
