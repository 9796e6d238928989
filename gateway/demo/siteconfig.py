"""Write a planned lab to disk: the test PKI, each site's keys and its ``qkd-gateway`` config.

Layout under the run directory (mode 0700, private keys 0600)::

    pki/                      ca.crt, kme-<site>.crt/.key, sae-<site>.crt/.key
    sites/<site>/
        ed25519.key mldsa65.key *.pub       identity (qkd-gateway keygen format)
        wireguard.key wireguard.pub         WireGuard key pair (wg genkey format)
        config.yaml                         the daemon's configuration (docs/config.md)
        state/  control.sock  daemon.log    used by the running daemon
    kms-sim.log

The YAML follows gateway.config's schema and is validated with ``load_config`` in the tests.
Peer public keys are referenced as ``{file: ...}`` (public, so a file of base64 is fine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from gateway.cli.keygen import write_wireguard_key
from gateway.demo.sites import PEER_PORT, LabPlan, SitePlan
from gateway.demo.topology import KMS_ADDRESS
from gateway.identity import SiteIdentity
from gateway.kms.sim.pki import ensure_pki

__all__ = ["KMS_PATH_NAME", "materialize", "site_config"]

# A tunnel's `kms` list names KMS *paths*, and the peer protocol disables a tunnel whose two ends
# list different names (policy_mismatch). Every site reaches the one QKD backbone through its own
# KME, so each site's single KMS entry carries this same name, with its own URL and KME ID.
KMS_PATH_NAME = "qkd-backbone"


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def site_config(plan: LabPlan, site: SitePlan) -> dict[str, Any]:
    """The configuration mapping of one site (paths relative to its directory)."""
    here = site.directory
    pki = plan.pki_dir
    kms_name = KMS_PATH_NAME
    peers: list[dict[str, Any]] = []
    tunnels: list[dict[str, Any]] = []
    for tunnel in plan.tunnels_of(site.name):
        peer = plan.by_name[tunnel.peer(site.name)]
        peers.append({
            "name": peer.name,
            "sae_id": peer.sae_id,
            "address": f"{peer.wan.ip}:{PEER_PORT}",
            "public_keys": {
                "ed25519": {"file": _rel(peer.directory / "ed25519.pub", here)},
                "mldsa65": {"file": _rel(peer.directory / "mldsa65.pub", here)},
            },
        })
        tunnels.append({
            "name": tunnel.name,
            "kind": "wireguard",
            "interface": tunnel.interface(site.name),
            "peer": peer.name,
            "policy": "qkd+pqc",
            "kms": [kms_name],
            "rekey_interval": f"{plan.rekey_interval:g}s",
            "reject_after": f"{plan.reject_after:g}s",
            # The demo removes everything it made, the tunnels included.
            "on_shutdown": "teardown",
            "wireguard": {
                "backend": plan.backend,
                "private_key": {"file": "wireguard.key"},
                "listen_port": tunnel.listen_port,
                "address": str(tunnel.address(site.name)),
                "peer_public_key": {"file": _rel(peer.directory / "wireguard.pub", here)},
                "endpoint": f"{peer.wan.ip}:{tunnel.listen_port}",
                # No persistent_keepalive: on one bridge there is no NAT to keep open, and
                # handshakes then happen on demand, after both ends hold a key.
                "allowed_ips": [f"{tunnel.address(peer.name).ip}/32"],
            },
        })
    return {
        "site": {
            "name": site.name,
            "sae_id": site.sae_id,
            "identity": {
                "ed25519_key": {"file": "ed25519.key"},
                "mldsa65_key": {"file": "mldsa65.key"},
            },
        },
        "state_dir": "state",
        "control_socket": "control.sock",
        "listen": {"address": str(site.wan.ip), "port": PEER_PORT},
        "kms": [{
            "name": kms_name,
            "kind": "etsi014",
            "url": site.kme_url,
            "kme_id": site.kme_id,
            "ca_file": _rel(pki / "ca.crt", here),
            "client_cert": _rel(pki / f"{site.sae_id}.crt", here),
            "client_key": {"file": _rel(pki / f"{site.sae_id}.key", here)},
        }],
        "peers": peers,
        "tunnels": tunnels,
        # JSON lines: the demo reads `tunnel_rekeyed` events from the daemon's log file.
        "telemetry": {"log": {"format": "json", "level": "info"}},
    }


def materialize(plan: LabPlan) -> None:
    """Create the PKI, every site's keys and config under ``plan.root`` (which must be private
    to this run: keys are written there)."""
    plan.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_pki(
        plan.pki_dir,
        kmes={s.kme_id: [str(KMS_ADDRESS.ip)] for s in plan.sites},
        saes=[s.sae_id for s in plan.sites],
    )
    for site in plan.sites:
        site.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (site.directory / "state").mkdir(mode=0o700, exist_ok=True)
        SiteIdentity.generate().save(site.directory)
        write_wireguard_key(site.directory)
    for site in plan.sites:
        text = yaml.safe_dump(site_config(plan, site), sort_keys=False)
        header = f"# qkd-gateway demo: site {site.name} (generated; removed with the lab)\n"
        site.config_path.write_text(header + text)
