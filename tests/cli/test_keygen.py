"""`qkd-gateway keygen`: private keys 0600, never overwritten, output usable in a peer config."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from gateway.config import load_config
from gateway.identity import SiteIdentity
from tests.config.sitefiles import BASE, assert_no_secrets, run_cli

pytestmark = pytest.mark.unit


def test_writes_0600_private_keys_and_public_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "new" / "site"
    assert run_cli("keygen", "--out-dir", str(out_dir), "--wireguard") == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out_dir.iterdir()}
    assert modes == {"ed25519.key": 0o600, "mldsa65.key": 0o600, "wireguard.key": 0o600,
                     "ed25519.pub": 0o644, "mldsa65.pub": 0o644, "wireguard.pub": 0o644}
    assert out_dir.stat().st_mode & 0o777 == 0o700
    out, err = capsys.readouterr()
    assert err == ""
    assert_no_secrets(out, [out_dir])
    # The WireGuard key is what `wg genkey` makes (clamped) and its public key is printed.
    raw = base64.b64decode((out_dir / "wireguard.key").read_text())
    assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40
    public = x25519.X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    wg_b64 = base64.b64encode(public).decode()
    assert f"#   peer_public_key: {wg_b64}\n" in out
    assert (out_dir / "wireguard.pub").read_text() == wg_b64 + "\n"


def test_refuses_to_overwrite_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("keygen", "--out-dir", str(tmp_path)) == 0
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    # Even a run that would add only the WireGuard key refuses: the identity files exist.
    assert run_cli("keygen", "--out-dir", str(tmp_path), "--wireguard") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"qkd-gateway keygen: refusing to overwrite {tmp_path}/ed25519.key (and 3 "
                   "more); choose another --out-dir or move the old keys away first\n")
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_output_round_trips_into_a_peer_config(
    write_config: Callable[[str], Path], site_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = tmp_path / "gamma"
    assert run_cli("keygen", "--out-dir", str(keys)) == 0
    out = capsys.readouterr().out
    snippet = yaml.safe_load(out)  # all of stdout is YAML; the rest are comments
    assert set(snippet) == {"public_keys"}
    block = "\n".join("    " + line for line in out.splitlines() if not line.startswith("#"))
    text = BASE.replace(
        "    public_keys:\n      ed25519: {file: keys/beta/ed25519.pub}\n"
        "      mldsa65: {file: keys/beta/mldsa65.pub}\n", block + "\n")
    peer = load_config(write_config(text)).peers[0]
    identity = SiteIdentity.load(keys / "ed25519.key", keys / "mldsa65.key")
    assert (peer.public_keys.ed25519, peer.public_keys.mldsa65) == (
        identity.public().ed25519, identity.public().mldsa65)
    # ...and a signature by the new identity verifies under the keys the config pinned.
    from gateway.identity import PeerPublicKeys

    ed_sig, ml_sig = identity.sign(b"hello", b"test")
    pinned = PeerPublicKeys(peer.public_keys.ed25519, peer.public_keys.mldsa65)
    assert pinned.verify(b"hello", ed_sig, ml_sig, b"test")


def test_help_is_available(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("keygen", "check-config"):
        with pytest.raises(SystemExit) as done:
            run_cli(command, "--help")
        assert done.value.code == 0
        assert "usage: qkd-gateway " + command in capsys.readouterr().out
