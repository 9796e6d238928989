"""The plan (names, IDs, addresses) and the files written from it, validated by gateway.config."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.demo import MAX_SITES, materialize, plan_lab, site_names


@pytest.mark.unit
def test_site_names() -> None:
    assert site_names(2) == ["bucharest", "cluj-napoca"]
    assert site_names(8)[5:] == ["constanta", "site-7", "site-8"]
    with pytest.raises(ValueError):
        site_names(MAX_SITES + 1)


@pytest.mark.unit
def test_star_plan_fits_kernel_names_and_addresses(tmp_path: Path) -> None:
    longest = "qgd4194304z"  # pid_max is 4194304: the longest prefix there can be
    plan = plan_lab(longest, tmp_path, MAX_SITES, 10)
    assert len(plan.tunnels) == MAX_SITES - 1
    assert {t.hub for t in plan.tunnels} == {"bucharest"}
    interfaces = [t.interface(s) for t in plan.tunnels for s in (t.hub, t.spoke)]
    assert len(set(interfaces)) == len(interfaces)
    assert max(len(i) for i in interfaces) <= 15
    nets = [t.network for t in plan.tunnels]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    t = plan.tunnels[0]
    assert (str(t.address("bucharest")), str(t.address("cluj-napoca"))) == (
        "10.77.1.1/30", "10.77.1.2/30")
    assert all(s.wan.ip in ipaddress.ip_network("198.18.0.0/15") for s in plan.sites)
    args = plan.kms_sim_args()
    assert "kme-bucharest=198.18.0.2:8400" in args and "kme-bucharest:kme-iasi" in args
    assert "sae-iasi@kme-iasi" in args
    with pytest.raises(ValueError):
        t.side("iasi")


@pytest.mark.unit
def test_written_configs_load_and_hold_no_secret(tmp_path: Path) -> None:
    plan = plan_lab("qgd1a", tmp_path / "run", 3, 7, backend="userspace")
    materialize(plan)
    assert (tmp_path / "run").stat().st_mode & 0o077 == 0
    hub = load_config(plan.sites[0].config_path)
    assert [p.name for p in hub.peers] == ["cluj-napoca", "iasi"]
    assert [t.interface for t in hub.tunnels] == ["qgd1aw1h", "qgd1aw2h"]
    assert hub.tunnels[0].rekey_interval == 7.0 and hub.tunnels[0].reject_after == 10.5
    spoke = load_config(plan.sites[2].config_path)
    assert spoke.site.sae_id == "sae-iasi" and spoke.kms[0].kme_id == "kme-iasi"
    # One KMS path name on every site: the peer protocol refuses tunnels whose lists differ.
    assert {load_config(s.config_path).kms[0].name for s in plan.sites} == {"qkd-backbone"}
    assert all(t.kms == ["qkd-backbone"] for t in hub.tunnels + spoke.tunnels)
    assert spoke.kms[0].url == "https://198.18.0.2:8402"
    wg = spoke.tunnels[0].wireguard
    assert wg is not None and wg.backend == "userspace"
    assert str(wg.address) == "10.77.2.2/30" and str(wg.endpoint) == "198.18.0.10:51822"
    # Peers' pinned keys are the files the other site's keygen wrote.
    hub_pub = (plan.sites[0].directory / "ed25519.pub").read_text().strip()
    assert spoke.peers[0].public_keys.ed25519 == base64.b64decode(hub_pub)
    for site in plan.sites:
        text = site.config_path.read_text()
        private = [site.directory / n for n in ("wireguard.key", "ed25519.key", "mldsa65.key")]
        private += [plan.pki_dir / f"{site.sae_id}.key"]
        for path in private:
            assert path.stat().st_mode & 0o077 == 0
            body = path.read_text().strip().splitlines()
            secret_lines = [ln for ln in body if ln and not ln.startswith("-----")]
            assert not any(ln in text for ln in secret_lines)
        assert "PRIVATE KEY" not in text
