"""Key files, a test PKI and a minimal valid configuration for the config and CLI tests."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import shutil
from pathlib import Path
from typing import Any

from gateway.cli import check_config, keygen
from gateway.identity import SiteIdentity
from gateway.kms.sim.pki import ensure_pki

REPO = Path(__file__).resolve().parents[2]


def _load_example_keys() -> Any:
    spec = importlib.util.spec_from_file_location("example_keys", REPO / "scripts/example_keys.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example_keys = _load_example_keys()

# Line numbers in the tests refer to this text: keep it stable.
BASE = """\
site:
  name: alpha
  sae_id: sae-alpha
  identity:
    ed25519_key: {file: keys/alpha/ed25519.key}
    mldsa65_key: {file: keys/alpha/mldsa65.key}
kms:
  - name: kms-a
    kind: etsi014
    url: https://127.0.0.1:8443
    kme_id: kme-a
    ca_file: pki/ca.crt
    client_cert: pki/sae-alpha.crt
    client_key: {file: pki/sae-alpha.key}
peers:
  - name: beta
    sae_id: sae-beta
    address: 198.51.100.2
    public_keys:
      ed25519: {file: keys/beta/ed25519.pub}
      mldsa65: {file: keys/beta/mldsa65.pub}
tunnels:
  - name: t0
    kind: wireguard
    interface: wg-beta
    peer: beta
    kms: [kms-a]
    wireguard:
      private_key: {file: keys/alpha/wireguard.key}
      peer_public_key: {file: keys/beta/wireguard.pub}
      allowed_ips: [10.2.0.0/16]
"""


def make_site_dir(directory: Path) -> Path:
    """keys/alpha, keys/beta (identity + WireGuard) and pki/ under ``directory``."""
    for name in ("alpha", "beta"):
        keys = directory / "keys" / name
        keys.mkdir(parents=True)
        SiteIdentity.generate().save(keys)
        keygen.write_wireguard_key(keys)
    ensure_pki(directory / "pki", kmes={"kme-a": []}, saes=["sae-alpha"])
    return directory


def copy_examples(directory: Path) -> Path:
    """The repository's example YAML files copied to ``directory``, keys generated there."""
    root = directory / "configs"
    for sub in sorted((REPO / "configs").iterdir()):
        if sub.is_dir() and sub.name not in ("keys", "pki"):
            shutil.copytree(sub, root / sub.name)
    assert example_keys.main(["--root", str(root)]) == 0
    return root


def cli_parser() -> argparse.ArgumentParser:
    """The two subcommands this area owns, registered the way gateway.cli.main does."""
    parser = argparse.ArgumentParser(prog="qkd-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen.register(sub)
    check_config.register(sub)
    return parser


def run_cli(*argv: str) -> int:
    args = cli_parser().parse_args(list(argv))
    code: int = args.func(args)
    return code


def secret_strings(key_file: Path) -> list[str]:
    """Spellings of the key in ``key_file`` that must never appear in any output: the file's
    base64 body, and the hex and base64 of the decoded bytes."""
    text = key_file.read_text()
    body = "".join(line for line in text.splitlines() if not line.startswith("-----"))
    raw = base64.b64decode(body)
    return [body, raw.hex(), base64.b64encode(raw).decode(), raw[-16:].hex()]


def assert_no_secrets(output: str, key_dirs: list[Path]) -> None:
    keys = [k for d in key_dirs for k in d.rglob("*.key")]
    assert keys
    for key in keys:
        for spelling in secret_strings(key):
            assert spelling not in output, f"content of {key} leaked"
