"""Write a planned lab to disk: the test PKI, each site's keys and its ``qkd-gateway`` config.

Layout under the run directory (mode 0700, private keys 0600)::

    pki/                      ca.crt, kme-<id>.crt/.key (every KME), sae-<site>.crt/.key
    sites/<site>/
        ed25519.key mldsa65.key *.pub       identity (qkd-gateway keygen format)
        wireguard.key wireguard.pub         WireGuard key pair (`wg genkey` / `wg pubkey`)
        config.yaml                         the daemon's configuration (docs/config.md)
        state/  control.sock  daemon.log    used by the running daemon
    kms-sim.log

The YAML follows gateway.config's schema and is validated with ``load_config`` in the tests.
Peer public keys are referenced as ``{file: ...}`` (public, so a file of base64 is fine).

A site lists one KMS entry per KME network it is in, named after the network (its URL and KME ID
are the site's own KME there); a tunnel's ``kms:`` names the networks its key comes from, the
same list at both ends (the peer protocol refuses a mismatch).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from gateway.demo.errors import ToolMissing
from gateway.demo.sites import PEER_PORT, LabPlan, SitePlan, TunnelPlan
from gateway.demo.topology import KMS_ADDRESS
from gateway.identity import SiteIdentity
from gateway.kms.sim.pki import ensure_pki

__all__ = ["materialize", "site_config", "write_wireguard_keypair"]

_WG_TIMEOUT_S = 10.0


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _wireguard_block(plan: LabPlan, site: SitePlan, tunnel: TunnelPlan,
                     peer: SitePlan) -> dict[str, Any]:
    here = site.directory
    return {
        "backend": plan.backend,
        "private_key": {"file": "wireguard.key"},
        "listen_port": tunnel.listen_port,
        "address": str(tunnel.address(site.name)),
        "peer_public_key": {"file": _rel(peer.directory / "wireguard.pub", here)},
        "endpoint": f"{peer.wan.ip}:{tunnel.listen_port}",
        # No persistent_keepalive: on one bridge there is no NAT to keep open, and handshakes
        # then happen on demand, after both ends hold a key.
        "allowed_ips": [f"{tunnel.address(peer.name).ip}/32"],
    }


def _xfrm_block(site: SitePlan, tunnel: TunnelPlan, peer: SitePlan) -> dict[str, Any]:
    # ESP tunnel mode between the WAN addresses, carrying the two tunnel addresses.
    return {
        "local_address": str(site.wan.ip),
        "remote_address": str(peer.wan.ip),
        "local_subnets": [f"{tunnel.address(site.name).ip}/32"],
        "remote_subnets": [f"{tunnel.address(peer.name).ip}/32"],
    }


def _kms_entry(plan: LabPlan, site: SitePlan, network: str) -> dict[str, Any]:
    here, pki = site.directory, plan.pki_dir
    kme = plan.kms.kme_of(site.name, network)
    entry: dict[str, Any] = {
        "name": network,
        "kind": "etsi014",
        "url": kme.url,
        "kme_id": kme.kme_id,
        "ca_file": _rel(pki / "ca.crt", here),
        "client_cert": _rel(pki / f"{site.sae_id}.crt", here),
        "client_key": {"file": _rel(pki / f"{site.sae_id}.key", here)},
    }
    s = plan.kms_settings
    pool = {k: v for k, v in (("target", s.target), ("batch", s.batch),
                              ("low_water", s.low_water)) if v is not None}
    if pool:
        entry["pool"] = pool
    if s.low_stock is not None:
        entry["low_stock"] = s.low_stock
    return entry


def site_config(plan: LabPlan, site: SitePlan) -> dict[str, Any]:
    """The configuration mapping of one site (paths relative to its directory)."""
    here = site.directory
    peers: list[dict[str, Any]] = []
    tunnels: list[dict[str, Any]] = []
    networks: list[str] = []
    for tunnel in plan.tunnels_of(site.name):
        peer = plan.by_name[tunnel.peer(site.name)]
        networks += [n for n in tunnel.kms if n not in networks]
        peers.append({
            "name": peer.name,
            "sae_id": peer.sae_id,
            "address": f"{peer.wan.ip}:{PEER_PORT}",
            "public_keys": {
                "ed25519": {"file": _rel(peer.directory / "ed25519.pub", here)},
                "mldsa65": {"file": _rel(peer.directory / "mldsa65.pub", here)},
            },
        })
        entry: dict[str, Any] = {
            "name": tunnel.name,
            "kind": "wireguard" if tunnel.dataplane == "wireguard" else "xfrm",
            "interface": tunnel.interface(site.name),
            "peer": peer.name,
            "policy": "qkd+pqc",
            "kms": list(tunnel.kms),
            "rekey_interval": f"{plan.rekey_interval:g}s",
            "reject_after": f"{plan.reject_after:g}s",
            # The demo removes everything it made, the tunnels included.
            "on_shutdown": "teardown",
        }
        if tunnel.dataplane == "wireguard":
            entry["wireguard"] = _wireguard_block(plan, site, tunnel, peer)
        else:
            entry["xfrm"] = _xfrm_block(site, tunnel, peer)
        tunnels.append(entry)
    telemetry: dict[str, Any] = {
        # JSON lines: the demo reads `tunnel_rekeyed` and alarm events from the daemon's log.
        "log": {"format": "json", "level": "info"},
    }
    if plan.mqtt is not None:
        telemetry["mqtt"] = {"url": plan.mqtt, "topic_prefix": f"qkd-demo/{plan.topology}"}
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
        "kms": [_kms_entry(plan, site, n) for n in networks],
        "peers": peers,
        "tunnels": tunnels,
        "telemetry": telemetry,
    }


def _wg(args: list[str], stdin: bytes = b"") -> bytes:
    try:
        done = subprocess.run(["wg", *args], input=stdin, capture_output=True,
                              timeout=_WG_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ToolMissing("`wg` not found: apt-get install wireguard-tools") from None
    if done.returncode != 0:
        # wg's stderr never holds the key; stdout (which may) is not quoted.
        raise ToolMissing(f"`wg {args[0]}` failed: {done.stderr.decode(errors='replace')[:200]}")
    return done.stdout


def write_wireguard_keypair(directory: Path) -> None:
    """``wireguard.key`` (0600, refuses to overwrite) and ``wireguard.pub``, made the way an
    operator makes them: ``wg genkey`` and ``wg pubkey``. The key is never printed."""
    private = _wg(["genkey"])
    public = _wg(["pubkey"], private)
    fd = os.open(directory / "wireguard.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    (directory / "wireguard.pub").write_bytes(public)


def materialize(plan: LabPlan, wireguard_keys: bool = True) -> None:
    """Create the PKI, every site's keys and config under ``plan.root`` (which must be private
    to this run: keys are written there). ``wireguard_keys=False`` skips the WireGuard key pairs
    (the lab-only mode starts no tunnel, and needs no `wg`)."""
    plan.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_pki(
        plan.pki_dir,
        kmes={k.kme_id: [str(KMS_ADDRESS.ip)] for k in plan.kms.kmes},
        saes=[s.sae_id for s in plan.sites] + [sae for sae, _ in plan.kms.extra_saes],
    )
    for site in plan.sites:
        site.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (site.directory / "state").mkdir(mode=0o700, exist_ok=True)
        SiteIdentity.generate().save(site.directory)
        if wireguard_keys:
            write_wireguard_keypair(site.directory)
    for site in plan.sites:
        text = yaml.safe_dump(site_config(plan, site), sort_keys=False)
        header = f"# qkd-gateway demo: site {site.name} (generated; removed with the lab)\n"
        site.config_path.write_text(header + text)
