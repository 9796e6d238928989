"""The example networks must work together, not only one file at a time: the peer protocol
enables a tunnel only when both ends configure it with the same name, mode, kind and KMS path
names (gateway.protocol.policy.reconcile)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _sites(network: str) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((CONFIGS / network).glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        out[cfg["site"]["name"]] = cfg
    return out


def _policy(t: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    return t.get("policy", "qkd+pqc"), t["kind"], tuple(t.get("kms", []))


@pytest.mark.parametrize("network", ["pair", "ronaqci"])
def test_both_ends_of_every_tunnel_agree(network: str) -> None:
    sites = _sites(network)
    assert len(sites) >= 2
    checked = 0
    for name, cfg in sites.items():
        for t in cfg.get("tunnels", []):
            peer_name = t["peer"]
            peer_sae = next(p["sae_id"] for p in cfg["peers"] if p["name"] == peer_name)
            other = next(c for c in sites.values() if c["site"]["sae_id"] == peer_sae)
            mirror = [u for u in other.get("tunnels", []) if u["name"] == t["name"]]
            assert mirror, f"{name}: tunnel {t['name']} has no twin at {other['site']['name']}"
            back = next(p for p in other["peers"] if p["name"] == mirror[0]["peer"])
            assert back["sae_id"] == cfg["site"]["sae_id"], (name, t["name"])
            assert _policy(mirror[0]) == _policy(t), (name, t["name"])
            checked += 1
    assert checked >= 2
