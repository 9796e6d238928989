#!/usr/bin/env python3
"""Generate the keys and test PKI that the example configurations in configs/ reference.

For every site configured in ``ROOT/**/*.yaml`` (default ROOT: this repository's configs/):

- ``ROOT/keys/<site>/``: its identity (``qkd-gateway keygen``: ed25519/mldsa65 .key + .pub)
  and, when any of its tunnels is WireGuard, ``wireguard.key`` + ``wireguard.pub``;
- ``ROOT/pki/``: one test CA, a server certificate per KME ID and a client certificate per SAE ID
  (``gateway.kms.sim.pki.ensure_pki``).

Idempotent: existing keys and certificates are kept, so peers' pinned public keys stay valid.
Nothing here is for production; ``ROOT/keys`` and ``ROOT/pki`` are git-ignored.

Usage: scripts/example_keys.py [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.cli.keygen import write_wireguard_key
from gateway.identity import SiteIdentity
from gateway.kms.sim.pki import ensure_pki, safe_id

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "configs"


def _sites(root: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(root.rglob("*.yaml")):
        if root / "keys" in path.parents or root / "pki" in path.parents:
            continue
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("site"), dict):
            out.append(data)
    return out


def _identity(directory: Path) -> str:
    names = ("ed25519.key", "mldsa65.key")
    present = [n for n in names if (directory / n).exists()]
    if len(present) == len(names):
        return "kept"
    if present:
        raise SystemExit(f"{directory} holds {present[0]} but not the rest of an identity; "
                         "move it away and run again")
    SiteIdentity.generate().save(directory)
    return "generated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="folder holding the example YAML files (default: configs/)")
    args = parser.parse_args(argv)
    root: Path = args.root
    kmes: dict[str, Iterable[str]] = {}
    saes: set[str] = set()
    wireguard_sites: set[str] = set()
    identities: set[str] = set()
    for data in _sites(root):
        site = data["site"]
        name = safe_id(str(site["name"]))
        identities.add(name)
        saes.add(safe_id(str(site["sae_id"])))
        for kms in data.get("kms") or []:
            host = urlsplit(str(kms.get("url", ""))).hostname
            kmes.setdefault(safe_id(str(kms["kme_id"])), [host] if host else [])
        if any(t.get("kind") == "wireguard" for t in data.get("tunnels") or []):
            wireguard_sites.add(name)
    for name in sorted(identities):
        directory = root / "keys" / name
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        state = _identity(directory)
        if name in wireguard_sites and not (directory / "wireguard.key").exists():
            write_wireguard_key(directory)
            state += " + wireguard"
        print(f"keys/{name}: {state}")
    ensure_pki(root / "pki", kmes=kmes, saes=sorted(saes))
    print(f"pki: CA, {len(kmes)} KME and {len(saes)} SAE certificates present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
