"""The full-stack pair on a real WireGuard data plane: two ``qkd-gateway run`` daemons in network
namespaces of the demo's lab topology (a bridged WAN, the KME network in its own namespace), N
tunnels on ONE WireGuard hub interface per site (wireguard-go, or the kernel's in the kernel lab).

One WireGuard interface has one key pair and its peers are told apart by public key, so two
interfaces can pair up as ONE peer of each other only. Of the N tunnels, ``real`` carry packets:
tunnel 1 joins the two hub interfaces, tunnels 2..real join alpha's hub to small spoke
interfaces at beta (one each, its own key). Every other tunnel's peer is a placeholder public
key, as in the recorded bench: its PSK is written into the real data plane and read back at both
ends, no packet uses it. The daemons, KMS clients and KME network are those of
:class:`bench.fullstack.gateways.GatewayPair`; only the addresses (the lab's WAN) and the
``wireguard`` blocks differ.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from bench.fullstack.gateways import (
    LINK_KEYS,
    READY_TIMEOUT,
    SITES,
    GatewayPair,
    Site,
    _start,
    _wg_public,
)
from gateway.demo.topology import KMS_ADDRESS, Topology
from gateway.kms.sim.pki import ensure_pki

__all__ = ["HUB_PORT", "Backend", "HubPair", "TunnelEnd", "ready_timeout"]

Backend = Literal["userspace", "kernel"]
#: UDP ports of the two hub interfaces (alpha listens, beta's interfaces dial it).
HUB_PORT = {"alpha": 51820, "beta": 51821}
#: Under QEMU TCG (the kernel lab sets QKD_KERNEL_LAB=1) a Python process takes a minute or more
#: to import the gateway: the KME network gets this long to come up there.
LAB_READY_TIMEOUT = 900.0
#: ``wg show`` of one interface: a UAPI or netlink round trip, milliseconds even with 100 peers.
WG_SHOW_TIMEOUT = 20.0

TunnelEnd = tuple[str, str]  # (interface, peer public key) of one tunnel at one site


def ready_timeout() -> float:
    """How long processes get to come up: GatewayPair's bound, longer in the kernel lab."""
    return LAB_READY_TIMEOUT if os.environ.get("QKD_KERNEL_LAB") == "1" else READY_TIMEOUT


def _keypair() -> tuple[str, str]:
    key = x25519.X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(pub).decode()


class HubPair(GatewayPair):
    """``with HubPair(100, rekey_interval=1.0, reject_after=4.0) as pair``: the lab's namespaces,
    the KME network and both daemons; ``pair.wait_keyed`` as for GatewayPair."""

    def __init__(self, tunnels: int, rekey_interval: float, reject_after: float,
                 backend: Backend = "userspace", real: int = 4) -> None:
        super().__init__(tunnels, rekey_interval, reject_after)
        self.backend = backend
        # Tunnels 1..real carry packets (tunnel 0 would route 10.x.0.0, a network address).
        self.real = range(1, 1 + min(real, tunnels - 1))
        self.topo = Topology(SITES)
        prefix = self.topo.prefix
        self.hub_if = {"alpha": f"{prefix}a", "beta": f"{prefix}b"}
        # Filled by _write_configs: tunnel i -> (interface, peer public key) at each site.
        self.ends: dict[str, list[TunnelEnd]] = {s: [] for s in SITES}

    def netns(self, site: str) -> str:
        return self.topo.sites[site].netns

    def spoke_if(self, i: int) -> str:
        return f"{self.topo.prefix}s{i}"

    def interfaces(self) -> list[tuple[str, str]]:
        """Every WireGuard interface of the pair as (site, name)."""
        spokes = [("beta", self.spoke_if(i)) for i in self.real if i != 1]
        return [("alpha", self.hub_if["alpha"]), ("beta", self.hub_if["beta"]), *spokes]

    # -- set-up -------------------------------------------------------------------------------
    def __enter__(self) -> HubPair:
        try:
            self.topo.build()
            # The KMEs serve on the lab's KMS address: put it in their certificates first
            # (_materialize keeps what exists).
            ensure_pki(self.pki, kmes={s.kme_id: [str(KMS_ADDRESS.ip)] for s in self.sites})
            self._materialize()
            self._start_kms()
            self._write_configs()
            for s in self.sites:
                s.proc = _start(["ip", "netns", "exec", self.netns(s.name), sys.executable,
                                 "-m", "gateway", "run", "--config",
                                 str(s.directory / "config.yaml")], s.directory / "daemon.log")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            # Every process left in the lab's namespaces (wireguard-go daemonises there), the
            # namespaces with every link, and the UAPI sockets of the prefix.
            self.topo.close()

    def _start_kms(self) -> None:
        argv = ["ip", "netns", "exec", self.topo.kms.netns, sys.executable, "-m", "gateway",
                "kms-sim", "--pki-dir", str(self.pki), "--log-format", "json",
                "--max-key-count", str(LINK_KEYS),
                "--link", f"{self.sites[0].kme_id}:{self.sites[1].kme_id}"]
        for s in self.sites:
            argv += ["--kme", f"{s.kme_id}={KMS_ADDRESS.ip}:0", "--sae", f"{s.sae_id}@{s.kme_id}"]
        self.kms = _start(argv, self.root / "kms-sim.log")
        deadline = time.monotonic() + ready_timeout()
        while time.monotonic() < deadline and self.kms.poll() is None:
            for rec in self.kms_log.read(frozenset({"kms_sim_ready"})):
                self.kme_urls = dict(rec["kmes"])
                return
            time.sleep(0.1)
        tail = (self.root / "kms-sim.log").read_text(errors="replace")[-1500:]
        state = "running" if self.kms.poll() is None else f"exit {self.kms.returncode}"
        raise RuntimeError(f"kms-sim did not become ready in the lab ({state} after "
                           f"{ready_timeout():g} s):\n{tail}")

    def _write_configs(self) -> None:
        a, b = self.sites
        pub = {s.name: (s.directory / "wireguard.pub").read_text().strip() for s in self.sites}
        spoke_pub: dict[int, str] = {}
        for i in self.real:
            if i != 1:
                private, spoke_pub[i] = _keypair()
                path = b.directory / f"spoke{i}.key"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(private + "\n")
        for i in range(self.n):
            if i == 1:
                ends = (pub["beta"], pub["alpha"])
            elif i in self.real:
                ends = (spoke_pub[i], pub["alpha"])
            else:
                ends = (_wg_public(), _wg_public())
            self.ends["alpha"].append((self.hub_if["alpha"], ends[0]))
            beta_if = self.spoke_if(i) if i in self.real and i != 1 else self.hub_if["beta"]
            self.ends["beta"].append((beta_if, ends[1]))
        for me, other in ((a, b), (b, a)):
            config = self._config(me, other, [k for _, k in self.ends[me.name]])
            self._place(config, me, other)
            # JSON is YAML (see GatewayPair._write_configs).
            (me.directory / "config.yaml").write_text(json.dumps(config, indent=1) + "\n")

    def _place(self, config: dict[str, Any], me: Site, other: Site) -> None:
        """GatewayPair's configuration moved onto the lab: WAN addresses, the KMEs' URLs, the
        real data plane on the hub (and spoke) interfaces, addresses for the real tunnels."""
        wan = {s: str(n.address.ip) for s, n in self.topo.sites.items()}
        config["listen"]["address"] = wan[me.name]
        config["peers"][0]["address"] = f"{wan[other.name]}:{other.port}"
        for i, t in enumerate(config["tunnels"]):
            ifname, _ = self.ends[me.name][i]
            wg = t["wireguard"]
            t["interface"] = ifname
            wg["backend"] = self.backend
            if ifname != self.hub_if[me.name]:  # one of beta's spokes
                wg["private_key"] = {"file": f"spoke{i}.key"}
                wg.pop("listen_port", None)
            else:
                wg["listen_port"] = HUB_PORT[me.name]
            if i in self.real:
                # What the other end routes to us for this tunnel (its allowed IP) is our
                # address on the tunnel's interface; beta dials alpha's hub.
                octet = 128 if me is self.sites[1] else 64
                wg["address"] = f"10.{192 - octet}.0.{i}/32"
                if me is self.sites[1]:
                    wg["endpoint"] = f"{wan['alpha']}:{HUB_PORT['alpha']}"
                    wg["persistent_keepalive"] = "10s"

    # -- observation --------------------------------------------------------------------------
    def wg_pids(self) -> dict[str, int]:
        """The wireguard-go processes of the pair's interfaces ({"wg-<ifname>": pid}); none
        with the kernel backend."""
        names = {name for _, name in self.interfaces()}
        found: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) >= 2 and argv[0].endswith(b"wireguard-go") and \
                    argv[1].decode(errors="replace") in names:
                found[f"wg-{argv[1].decode()}"] = int(entry.name)
        return found

    def pids(self) -> dict[str, int]:
        return {**super().pids(), **self.wg_pids()}

    def psks(self) -> dict[str, dict[str, dict[str, str]]]:
        """``wg show IF preshared-keys`` of every interface: {site: {ifname: {peer: psk}}}."""
        out: dict[str, dict[str, dict[str, str]]] = {s: {} for s in SITES}
        for site, ifname in self.interfaces():
            done = subprocess.run(["ip", "netns", "exec", self.netns(site), "wg", "show",
                                   ifname, "preshared-keys"], capture_output=True, text=True,
                                  timeout=WG_SHOW_TIMEOUT)
            out[site][ifname] = dict(line.split("\t", 1) for line in done.stdout.splitlines()
                                     if "\t" in line) if done.returncode == 0 else {}
        return out

    def psk_equal(self) -> list[bool]:
        """Per tunnel: the PSK both data planes hold for it is set and the same (read at both
        ends now; a rotation between the two reads shows as a difference)."""
        got = self.psks()
        equal = []
        for i in range(self.n):
            keys = [got[s].get(self.ends[s][i][0], {}).get(self.ends[s][i][1]) for s in SITES]
            equal.append(keys[0] is not None and keys[0] not in ("", "(none)")
                         and keys[0] == keys[1])
        return equal
