"""Two real sites for end-to-end tests: the demo's lab (namespaces on a bridged WAN, the KME
network in its own namespace) with real `qkd-gateway run` processes, real WireGuard (wireguard-go
on the host, the kernel's in the kernel lab) and a 20/s pinger through the tunnel.

Tests change the generated configuration through ``overrides`` (applied to every site's tunnel),
stop/continue the KME network with SIGSTOP/SIGCONT (the KMS stops answering, its key store
survives), and SIGKILL/restart daemons.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.demo import (
    KMS_ADDRESS,
    LabPlan,
    LabProcess,
    Pinger,
    ProcessSet,
    SitePlan,
    Topology,
    gateway_argv,
    materialize,
    new_prefix,
    plan_lab,
    site_names,
    wait_for_kme,
)
from gateway.demo.lab import detect_backend

__all__ = ["Lab"]


def wg_show(netns: str, ifname: str, what: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "wg", "show", ifname, what],
                          check=True, capture_output=True, text=True, timeout=10).stdout


class Lab:
    """``async with Lab(rekey_interval=3, tunnel={"policy": "pqc"}) as lab``: two sites.

    ``sites=N`` builds a star (the first site is the hub, see gateway.demo.sites);
    ``hub_interface=True`` puts all of the hub's tunnels on ONE WireGuard interface (one peer
    per spoke), as wg-quick/networkd hubs run."""

    def __init__(self, rekey_interval: float = 3.0, reject_after: float | None = None,
                 tunnel: dict[str, Any] | None = None, wireguard: dict[str, Any] | None = None,
                 kms: dict[str, Any] | None = None,
                 max_key_count: int = 10_000, kms_deadline: float = 20.0,
                 sites: int = 2, hub_interface: bool = False) -> None:
        self.sites = sites
        self.hub_interface = hub_interface
        self.rekey_interval = rekey_interval
        self.reject_after = reject_after or rekey_interval * 2
        self.tunnel_overrides = tunnel or {}
        self.wg_overrides = wireguard or {}
        self.kms_overrides = kms or {}
        self.max_key_count = max_key_count
        self.kms_deadline = kms_deadline
        self.prefix = new_prefix()
        self.root = Path(tempfile.mkdtemp(prefix=f"qkd-e2e-{self.prefix}-"))
        self._stack = contextlib.AsyncExitStack()
        self.daemons: dict[str, LabProcess] = {}

    # -- set-up ---------------------------------------------------------------------------------
    async def __aenter__(self) -> Lab:
        try:
            self.topo = await self._stack.enter_async_context(
                Topology(site_names(self.sites), self.prefix))
            backend = await asyncio.to_thread(detect_backend, self.topo.wan_netns,
                                              f"{self.prefix}wgp")
            self.plan: LabPlan = plan_lab(
                self.prefix, self.root, self.sites, self.rekey_interval, backend,
                {n: node.netns for n, node in self.topo.sites.items()})
            object.__setattr__(self.plan, "max_key_count", self.max_key_count)
            await asyncio.to_thread(materialize, self.plan)
            for site in self.plan.sites:
                self._rewrite_config(site)
            self.procs = await self._stack.enter_async_context(ProcessSet())
            await self.start_kms()
        except BaseException:
            await self._stack.aclose()
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._stack.aclose()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _rewrite_config(self, site: SitePlan) -> None:
        cfg = yaml.safe_load(site.config_path.read_text())
        # A KMS name names the QKD network (path) and is the same at both ends of a tunnel.
        cfg["kms"][0]["name"] = "qkd"
        cfg["kms"][0].update(self.kms_overrides)
        hub = self.plan.tunnels[0]
        for t in cfg["tunnels"]:
            if self.hub_interface:
                # Every hub tunnel on the first tunnel's interface and port; spokes dial it.
                if site.name == hub.hub:
                    t["interface"] = hub.interface(hub.hub)
                    t["wireguard"]["listen_port"] = hub.listen_port
                else:
                    t["wireguard"]["endpoint"] = f"{self.plan.by_name[hub.hub].wan.ip}:" \
                                                 f"{hub.listen_port}"
            t["kms"] = ["qkd"]
            t["reject_after"] = f"{self.reject_after:g}s"
            t.update(self.tunnel_overrides)
            t["wireguard"].update(self.wg_overrides)
            if t["wireguard"].get("adopt"):
                # The adopted interface keeps its own; the gateway only sets the PSK.
                for key in ("private_key", "listen_port", "address", "endpoint", "allowed_ips"):
                    t["wireguard"].pop(key, None)
            if t.get("policy") == "pqc":
                t["kms"] = []
        site.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    # -- processes ------------------------------------------------------------------------------
    async def start_kms(self) -> None:
        argv = gateway_argv("kms-sim", *self.plan.kms_sim_args(), "--log-format", "json")
        self.kms = await self.procs.start("kms-sim", f"{self.prefix}-kms", argv,
                                          self.plan.kms_log_path)
        await self.wait_kms_ready()

    async def wait_kms_ready(self) -> None:
        """Every site's KME answers its SAE, both directions of every tunnel."""
        ends = [(self.plan.by_name[t.spoke], self.plan.by_name[t.hub]) for t in self.plan.tunnels]
        ends += [(b, a) for a, b in ends]
        await asyncio.gather(*(
            wait_for_kme(s.netns, str(KMS_ADDRESS.ip), s.kme_port, deadline_s=self.kms_deadline,
                         kme_id=s.kme_id,
                         slave_sae_id=o.sae_id, ca_file=self.plan.pki_dir / "ca.crt",
                         cert_file=self.plan.pki_dir / f"{s.sae_id}.crt",
                         key_file=self.plan.pki_dir / f"{s.sae_id}.key")
            for s, o in ends))

    def pause_kms(self) -> None:
        """The KMS stops answering (connections hang), its key store is kept."""
        os.kill(self.kms.pid, signal.SIGSTOP)

    def resume_kms(self) -> None:
        os.kill(self.kms.pid, signal.SIGCONT)

    async def start_daemon(self, name: str) -> LabProcess:
        site = self.plan.by_name[name]
        argv = gateway_argv("run", "--config", str(site.config_path))
        proc = await self.procs.start(f"daemon {name}", site.netns, argv, site.log_path)
        self.daemons[name] = proc
        return proc

    async def start_daemons(self) -> None:
        for s in self.plan.sites:
            await self.start_daemon(s.name)

    def kill_daemon(self, name: str) -> None:
        # The daemon alone: wireguard-go runs in its own session and keeps the tunnel up.
        os.kill(self.daemons[name].pid, signal.SIGKILL)

    # -- observation ----------------------------------------------------------------------------
    def other(self, site: SitePlan) -> SitePlan:
        return next(s for s in self.plan.sites if s is not site)

    @property
    def tunnel(self) -> Any:
        return self.plan.tunnels[0]

    def psk(self, name: str) -> str:
        """What `wg show <if> preshared-keys` reports for the one peer ("(none)" when unset)."""
        site = self.plan.by_name[name]
        out = wg_show(site.netns, self.tunnel.interface(name), "preshared-keys").split()
        assert len(out) == 2, out
        return out[1]

    def psks(self, name: str, ifname: str) -> dict[str, str]:
        """Every peer's PSK on ``ifname`` of site ``name``: {peer public key: PSK}; {} when the
        interface does not exist."""
        done = subprocess.run(["ip", "netns", "exec", self.plan.by_name[name].netns, "wg",
                               "show", ifname, "preshared-keys"], capture_output=True,
                              text=True, timeout=10)
        if done.returncode != 0:
            return {}  # no such interface (yet, or any more)
        return dict(line.split("\t", 1) for line in done.stdout.splitlines() if line.strip())

    def events(self, name: str, event: str) -> list[dict[str, Any]]:
        lines = self.plan.by_name[name].log_path.read_text(errors="replace").splitlines()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict) and rec.get("event") == event:
                    out.append(rec)
        return out

    def epochs(self, name: str) -> list[int]:
        return [e["epoch"] for e in self.events(name, "tunnel_rekeyed")]

    def state_epoch(self, name: str) -> int | None:
        """The epoch site ``name``'s state directory records for the lab's tunnel (None: no
        readable file). The daemon commits it shortly after the activation it logs
        (gateway.daemon.commit), so right after a rekey it may still show the previous one."""
        path = self.plan.by_name[name].directory / "state" / "tunnels" / f"{self.tunnel.name}.json"
        with contextlib.suppress(OSError, ValueError):
            epoch = json.loads(path.read_text()).get("epoch")
            return epoch if isinstance(epoch, int) else None
        return None

    async def wait_state_committed(self, name: str, timeout: float) -> None:
        """Wait until the state directory of ``name`` records the last epoch it logged."""
        await self.wait_for(lambda: self.epochs(name) and
                            self.state_epoch(name) == self.epochs(name)[-1], timeout,
                            f"{name}'s state directory to record its last activation")

    async def kill_and_read_state(self, name: str) -> tuple[int | None, int]:
        """SIGKILL ``name``; returns what its state directory recorded at that moment and the
        epoch it had logged last (equal unless the kill fell between an activation and its
        commit)."""
        self.kill_daemon(name)
        await self.daemons[name].wait(10)
        return self.state_epoch(name), self.epochs(name)[-1]

    def check_restart_start(self, name: str, recorded: int | None, logged: int) -> None:
        """After ``name`` was SIGKILLed and restarted: if its state directory recorded the epoch
        it had activated last (``logged``), the restart must resume that epoch; if the kill fell
        between an activation and its commit (``recorded`` behind), it must start closed."""
        resumed = self.events(name, "tunnel_resumed")
        if recorded == logged:
            assert resumed and resumed[0]["epoch"] == logged, \
                f"{name} did not resume epoch {logged} from its state directory"
        else:
            assert not resumed, f"{name} resumed although its state was behind its data plane"
            assert any("no valid key at start" in e.get("reason", "")
                       for e in self.events(name, "tunnel_failed_closed")), name

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for p in self.daemons.values():
                if p.returncode not in (None, -9):
                    raise AssertionError(f"{p.name} exited ({p.returncode}): {p.log_tail(20)}")
            if time.monotonic() > deadline:
                # The daemons' own account is what tells a slow machine from a bug: keep it.
                tails = "\n".join(f"--- {p.name}:\n{p.log_tail(40)}"
                                   for p in self.daemons.values())
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")
            await asyncio.sleep(0.1)

    def pinger(self) -> Pinger:
        t = self.tunnel
        return Pinger(self.plan.by_name[t.hub].netns, str(t.address(t.spoke).ip))
