"""Translate the validated configuration into the components the daemon runs.

This is the one place that knows both the config models and the component constructors, so the
components themselves stay ignorant of YAML (the data plane knows nothing of the protocol, the
protocol nothing of files).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from gateway.config import GatewayConfig, Kms, Tunnel
from gateway.dataplane import WgInterfaceSpec, WgPeerSpec
from gateway.dataplane.xfrm import REQID_MAX, REQID_MIN, EspTunnelSpec, Lifetime, reqid_for
from gateway.dataplane.xfrm.spec import resolve
from gateway.identity import PeerPublicKeys, SiteIdentity
from gateway.keymaterial import Secret
from gateway.kms import Etsi014Client, KeyPool, KeySource, RetryPolicy, SkipClient
from gateway.protocol import Kind, Mode, PeerAddress, PeerConfig, TunnelPolicy

__all__ = [
    "BuildError",
    "WireGuardPlan",
    "build_kms",
    "build_peers",
    "build_pools",
    "esp_reqids",
    "esp_spec",
    "load_identity",
    "wireguard_plans",
]

#: QKD keys enter the combiner at 256 bits (gateway.protocol.constants.QKD_KEY_LEN).
QKD_KEY_BITS = 256


class BuildError(RuntimeError):
    """The configuration is valid but cannot be run here; the message says why and what to do."""


def load_identity(cfg: GatewayConfig) -> SiteIdentity:
    ident = cfg.site.identity
    return SiteIdentity.load(ident.ed25519_key.path, ident.mldsa65_key.path)


def _kms_client(k: Kms, peer_saes: list[str]) -> KeySource:
    if k.kind == "etsi014":
        assert k.kme_id is not None  # enforced by the config model
        return Etsi014Client(
            name=k.name, url=k.url, kme_id=k.kme_id, ca_file=k.ca_file,
            cert_file=k.client_cert, key_file=k.client_key.path,
            timeout=k.timeouts.request, connect_timeout=k.timeouts.connect,
        )
    return SkipClient(
        name=k.name, url=k.url, local_system_id=k.kme_id or k.name,
        # SKIP names the far end by remoteSystemID (kms[].skip.remote_system_ids, else the SAE ID).
        remote_system_ids={sae: k.remote_system_id(sae) for sae in peer_saes}, ca_file=k.ca_file,
        cert_file=k.client_cert,
        key_file=k.client_key.path, timeout=k.timeouts.request,
        connect_timeout=k.timeouts.connect,
    )


def build_kms(cfg: GatewayConfig) -> dict[str, KeySource]:
    """One client (one kept-alive mTLS connection pool) per configured KMS that a tunnel uses."""
    used = {name for t in cfg.tunnels for name in t.kms}
    saes = [p.sae_id for p in cfg.peers]
    return {k.name: _kms_client(k, saes) for k in cfg.kms if k.name in used}


def build_pools(
    cfg: GatewayConfig, sources: dict[str, KeySource]
) -> dict[tuple[str, str], KeyPool]:
    """A master-side key pool per (KMS, peer SAE ID) that some tunnel draws from."""
    peers = {p.name: p for p in cfg.peers}
    kms_cfg = {k.name: k for k in cfg.kms}
    pools: dict[tuple[str, str], KeyPool] = {}
    for t in cfg.tunnels:
        slave = peers[t.peer].sae_id
        for name in t.kms:
            if (name, slave) in pools:
                continue
            p = kms_cfg[name].pool
            pools[(name, slave)] = KeyPool(
                sources[name], slave, QKD_KEY_BITS, low_water=p.low_water,
                high_water=p.target, batch=p.batch, backoff=RetryPolicy(),
            )
    return pools


def _policy(t: Tunnel) -> TunnelPolicy:
    kind = Kind.WIREGUARD if t.kind == "wireguard" else Kind.ESP
    return TunnelPolicy(t.name, Mode.parse(t.policy), tuple(t.kms), kind)


def esp_reqids(tunnels: list[Tunnel], keep: dict[str, int] | None = None) -> dict[str, int]:
    """The reqid of every XFRM tunnel: a stable hash of its name into our range (as
    gateway.dataplane.xfrm.assign_reqids, which this equals for a fresh start), except that
    tunnels in ``keep`` (running ones, on a reload) keep theirs, so a reload never renumbers a
    running tunnel's SAs and policies."""
    names = sorted(t.name for t in tunnels if t.kind == "xfrm")
    out = {n: keep[n] for n in names if keep and n in keep}
    taken = set(out.values())
    for name in names:
        if name in out:
            continue
        reqid = reqid_for(name)
        while reqid in taken:
            reqid = REQID_MIN if reqid == REQID_MAX else reqid + 1
        taken.add(reqid)
        out[name] = reqid
    return out


def esp_spec(t: Tunnel, reqid: int) -> EspTunnelSpec:
    """The data plane's view of an XFRM tunnel; BuildError if the kernel would refuse it."""
    x = t.xfrm
    assert x is not None  # the config model requires the block for kind: xfrm
    life = x.lifetime

    def whole(v: float | None) -> int | None:
        return None if v is None else int(v)

    spec = EspTunnelSpec(
        name=t.name, local=str(x.local_address), remote=str(x.remote_address),
        local_subnets=tuple(str(n) for n in x.local_subnets),
        remote_subnets=tuple(str(n) for n in x.remote_subnets), reqid=reqid, mode=x.mode,
        if_id=x.if_id, ifname=t.interface if x.mode == "route" else None,
        replay_window=x.replay_window, esn=x.esn,
        lifetime=Lifetime(soft_seconds=whole(life.soft_time), hard_seconds=whole(life.hard_time),
                          soft_bytes=life.soft_bytes, hard_bytes=life.hard_bytes,
                          soft_packets=life.soft_packets, hard_packets=life.hard_packets))
    try:
        resolve(spec)
    except ValueError as exc:
        raise BuildError(f"tunnel {t.name!r}: {exc}") from None
    return spec


def build_peers(cfg: GatewayConfig) -> tuple[dict[str, PeerConfig], list[PeerAddress]]:
    """Pinned peers with the tunnels configured towards each, and where to dial them."""
    peers: dict[str, PeerConfig] = {}
    addrs: list[PeerAddress] = []
    for p in cfg.peers:
        tunnels = tuple(_policy(t) for t in cfg.tunnels if t.peer == p.name)
        keys = PeerPublicKeys(p.public_keys.ed25519, p.public_keys.mldsa65)
        peers[p.name] = PeerConfig(p.sae_id, keys, tunnels)
        addrs.append(PeerAddress(p.name, p.address.host, p.address.port))
    return peers, addrs


@dataclass(frozen=True, slots=True)
class WireGuardPlan:
    tunnel: str
    backend: str  # auto | kernel | userspace
    spec: WgInterfaceSpec
    peer_public_key: str


def _read_wg_private(path: Path) -> Secret:
    try:
        raw = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (OSError, ValueError):
        raw = b""
    if len(raw) != 32:
        # Never quote the file's content: it is a private key, or was meant to be.
        raise BuildError(f"{path} does not hold a WireGuard private key (`wg genkey` output)")
    return Secret(raw)


def _peer_spec(t: Tunnel) -> WgPeerSpec:
    wg = t.wireguard
    assert wg is not None  # the config model requires the block for kind: wireguard
    return WgPeerSpec(
        public_key=base64.b64encode(wg.peer_public_key).decode(),
        endpoint=str(wg.endpoint) if wg.endpoint is not None else None,
        allowed_ips=tuple(str(c) for c in wg.allowed_ips),
        persistent_keepalive=int(wg.persistent_keepalive) if wg.persistent_keepalive else None,
    )


def wireguard_plans(tunnels: list[Tunnel]) -> dict[str, WireGuardPlan]:
    """A plan per WireGuard tunnel. Tunnels that name the same interface (a hub) share ONE
    interface spec holding every tunnel's peer and address; the config loader has checked that
    they agree on the interface's own settings (gateway.config.crosscheck)."""
    groups: dict[str, list[Tunnel]] = {}
    for t in tunnels:
        if t.kind == "wireguard":
            groups.setdefault(t.interface, []).append(t)
    plans: dict[str, WireGuardPlan] = {}
    for ifname, members in groups.items():
        wg = members[0].wireguard
        assert wg is not None
        private = None if wg.private_key is None else _read_wg_private(wg.private_key.path)
        if private is None and not wg.adopt:
            raise BuildError(f"tunnel {members[0].name!r}: wireguard.private_key is required "
                             "unless adopt")
        addresses = [str(m.wireguard.address) for m in members
                     if m.wireguard is not None and m.wireguard.address is not None]
        spec = WgInterfaceSpec(
            name=ifname, private_key=private, listen_port=wg.listen_port,
            addresses=tuple(dict.fromkeys(addresses)),
            peers=tuple(_peer_spec(m) for m in members), adopt=wg.adopt,
        )
        for m, peer in zip(members, spec.peers, strict=True):
            plans[m.name] = WireGuardPlan(m.name, wg.backend, spec, peer.public_key)
    return plans
