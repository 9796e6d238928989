"""The plan (names, IDs, addresses) and the files written from it, validated by gateway.config."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.demo import (
    MAX_SITES,
    DemoOptions,
    materialize,
    plan_for,
    plan_lab,
    plan_ronaqci,
    site_names,
)
from gateway.demo.ronaqci import BACKBONE, SECOND, STARVED


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
    # A built plan's store size and default rate can be overridden (the e2e tests do).
    object.__setattr__(plan, "max_key_count", 7)
    object.__setattr__(plan, "key_rate", 256.0)
    args = plan.kms_sim_args()
    assert args[args.index("--max-key-count") + 1] == "7"
    assert args[args.index("--key-rate") + 1] == "256"


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


@pytest.mark.unit
def test_ronaqci_plan_two_disjoint_paths_and_a_starved_span(tmp_path: Path) -> None:
    plan = plan_ronaqci("qgd1a", tmp_path, 5)
    assert [s.name for s in plan.sites] == ["bucharest", "cluj-napoca", "iasi", "timisoara",
                                            "craiova", "constanta"]
    assert [t.name for t in plan.tunnels] == [
        "bucharest--cluj-napoca", "bucharest--iasi", "bucharest--timisoara",
        "bucharest--craiova", "bucharest--constanta"]
    cluj = plan.tunnel("bucharest--cluj-napoca")
    assert cluj.kms == (BACKBONE, SECOND)
    west = [k.place for k in plan.kms.path(BACKBONE, "bucharest", "cluj-napoca")]
    east = [k.place for k in plan.kms.path(SECOND, "bucharest", "cluj-napoca")]
    assert west == ["bucharest", "pitesti", "sibiu", "alba-iulia", "cluj-napoca"]
    assert east == ["bucharest", "ploiesti", "brasov", "sighisoara", "targu-mures",
                    "cluj-napoca"]
    # Node-disjoint: no KME of one path is in the other (the end KMEs are distinct too).
    ids = [{k.kme_id for k in plan.kms.path(n, "bucharest", "cluj-napoca")}
           for n in (BACKBONE, SECOND)]
    assert not ids[0] & ids[1]
    # Every span within the ~150 km reach of a QKD link; rates from the length model.
    for link in plan.kms.links:
        assert link.length_km is not None and 45 <= link.length_km <= 150
        assert link.rate_bps is not None and 0.4e3 <= link.rate_bps <= 120e3
    starved = plan.kms.link(f"kme-{STARVED[0]}", f"kme-{STARVED[1]}")
    assert starved.penalty_db == 5.0 and starved.rate_bps is not None
    assert 400 <= starved.rate_bps <= 600
    assert plan.starved == ("kme-slobozia", "kme-constanta")
    assert plan.starved_tunnel == "bucharest--constanta"
    assert [k.place for k in plan.kms.path(BACKBONE, "bucharest", "constanta")] == [
        "bucharest", "slobozia", "constanta"]
    assert 1500 <= sum(link.length_km or 0 for link in plan.kms.links) <= 2500
    assert plan.reject_after == 15.0
    args = plan.kms_sim_args()
    assert args.count("--kme") == len(plan.kms.kmes) == 21
    assert "sae-bucharest@kme-bucharest" in args and "sae-bucharest@kme-bucharest-2" in args
    assert "sae-constanta-backup@kme-constanta" in args
    assert args[args.index("--fluctuation") + 1] == "walk:0.3:1"


@pytest.mark.unit
def test_ronaqci_configs_list_both_networks_and_load(tmp_path: Path) -> None:
    plan = plan_for(DemoOptions(topology="ronaqci", rekey_interval=5, mqtt="127.0.0.1:1883"),
                    "qgd1a", tmp_path / "run", "userspace")
    materialize(plan)
    hub = load_config(plan.sites[0].config_path)
    assert [k.name for k in hub.kms] == [BACKBONE, SECOND]
    assert [k.kme_id for k in hub.kms] == ["kme-bucharest", "kme-bucharest-2"]
    assert all(k.low_stock == 8 and k.pool.target == 4 and k.pool.batch == 2 for k in hub.kms)
    tunnels = {t.name: t for t in hub.tunnels}
    assert tunnels["bucharest--cluj-napoca"].kms == [BACKBONE, SECOND]
    assert tunnels["bucharest--iasi"].kms == [BACKBONE]
    assert all(t.reject_after == 15.0 and t.rekey_interval == 5.0 for t in hub.tunnels)
    cluj = load_config(plan.by_name["cluj-napoca"].config_path)
    assert [k.name for k in cluj.kms] == [BACKBONE, SECOND]
    iasi = load_config(plan.by_name["iasi"].config_path)
    assert [k.name for k in iasi.kms] == [BACKBONE] and iasi.kms[0].kme_id == "kme-iasi"
    for cfg in (hub, cluj, iasi):
        assert cfg.telemetry.mqtt is not None
        assert cfg.telemetry.mqtt.url == "mqtt://198.18.0.2:1883"
        assert cfg.telemetry.mqtt.topic_prefix == "qkd-demo/ronaqci"
    # The backup application's certificates exist (it is a client of the Constanta KME).
    assert (plan.pki_dir / "sae-constanta-backup.crt").exists()


@pytest.mark.unit
def test_xfrm_and_mixed_data_planes_write_valid_esp_tunnels(tmp_path: Path) -> None:
    plan = plan_for(DemoOptions(topology="ronaqci", rekey_interval=5, dataplane="mixed"),
                    "qgd1a", tmp_path / "run", "userspace")
    assert [t.dataplane for t in plan.tunnels] == ["esp", "wireguard", "esp", "wireguard",
                                                   "esp"]
    materialize(plan)
    hub = load_config(plan.sites[0].config_path)
    esp = [t for t in hub.tunnels if t.kind == "xfrm"]
    assert [t.name for t in esp] == ["bucharest--cluj-napoca", "bucharest--timisoara",
                                     "bucharest--constanta"]
    x = esp[0].xfrm
    assert x is not None and str(x.local_address) == "198.18.0.10"
    assert str(x.remote_address) == "198.18.0.11"
    assert [str(n) for n in x.local_subnets] == ["10.77.1.1/32"]
    assert esp[0].interface == "qgd1ax1h"
    with pytest.raises(ValueError, match="choose one of wireguard, kernel, xfrm, mixed"):
        plan_for(DemoOptions(topology="pair", dataplane="ipsec"), "qgd1a", tmp_path, "auto")
