"""The lab's network: one namespace per site, a ``kms`` namespace, all on a bridged WAN.

Picture (prefix ``qgd4242a``, two sites)::

    qgd4242a-wan:  br0 ── p0 ── p1 ── pkms          (the simulated WAN, a Linux bridge)
                          │     │     │
    qgd4242a-bucharest:  wan0 198.18.0.10/24
    qgd4242a-cluj-napoca:      wan0 198.18.0.11/24
    qgd4242a-kms:                     wan0 198.18.0.2/24   (the KME network listens here)

WAN addresses come from 198.18.0.0/15 (RFC 2544, benchmarking): they exist only inside the
lab's namespaces. Every veth is created directly inside its namespaces, so the host's own
namespace never holds a lab interface and deleting the namespaces removes every link.

Names start with a per-run prefix ``qgd<pid><letter>``: two runs (or a run and the test suite)
never collide, and :func:`cleanup` can remove what a crashed run left behind, identified by the
prefix alone (:func:`stale_prefixes` finds prefixes whose process is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import string
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from gateway.demo.errors import NetnsError
from gateway.demo.netns import list_netns, netns_exists, netns_pids, run_ip

__all__ = [
    "KMS_ADDRESS",
    "WAN_NETWORK",
    "LabNode",
    "Topology",
    "cleanup",
    "new_prefix",
    "site_wan_address",
    "stale_prefixes",
]

WAN_NETWORK = ipaddress.IPv4Network("198.18.0.0/24")
KMS_ADDRESS = ipaddress.IPv4Interface("198.18.0.2/24")
_FIRST_SITE_HOST = 10
MAX_SITES = 32  # keeps every derived interface name within the kernel's 15 bytes
WAN_IF = "wan0"
BRIDGE = "br0"
WIREGUARD_RUN_DIR = Path("/var/run/wireguard")
_PREFIX_RE = re.compile(r"^qgd(\d+)[a-z]$")
_counter = itertools.cycle(string.ascii_lowercase)
# Processes still inside a namespace at teardown get this long after SIGTERM before SIGKILL.
_KILL_GRACE_S = 2.0


def site_wan_address(index: int) -> ipaddress.IPv4Interface:
    """WAN address of site ``index`` (0-based): 198.18.0.10/24, .11, ..."""
    if not 0 <= index < MAX_SITES:
        raise ValueError(f"site index {index} out of range 0..{MAX_SITES - 1}")
    return ipaddress.IPv4Interface(f"{WAN_NETWORK.network_address + _FIRST_SITE_HOST + index}/24")


def new_prefix() -> str:
    """A fresh name prefix ``qgd<pid><letter>`` that no namespace uses yet (<= 11 chars)."""
    existing = list_netns()
    for _ in range(26):
        prefix = f"qgd{os.getpid()}{next(_counter)}"
        if not any(name.startswith(prefix + "-") for name in existing):
            return prefix
    raise NetnsError("26 lab prefixes of this process are in use; run `qkd-gateway demo --cleanup`")


def _check_prefix(prefix: str) -> None:
    # A loose prefix ("" or "q") would match namespaces that are not ours: refuse it.
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"{prefix!r} is not a lab prefix; they look like qgd1234a")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_prefixes() -> list[str]:
    """Prefixes of lab namespaces whose creating process no longer runs."""
    found: set[str] = set()
    for name in list_netns():
        head = name.split("-", 1)[0]
        match = _PREFIX_RE.fullmatch(head)
        if match and not _pid_alive(int(match.group(1))):
            found.add(head)
    return sorted(found)


def _kill_netns_processes(names: Sequence[str]) -> None:
    pids = [pid for name in names for pid in netns_pids(name)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + _KILL_GRACE_S
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _pid_alive(pid) and not _is_zombie(pid)]
            time.sleep(0.05)
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def cleanup(prefix: str, *, temp_dirs: bool = True) -> list[str]:
    """Remove everything a lab run with ``prefix`` created: processes in its namespaces, the
    namespaces (and with them every link), stale WireGuard UAPI sockets and (``temp_dirs``) its
    temp directories. Safe to call repeatedly; returns what it removed, for the operator."""
    _check_prefix(prefix)
    names = [n for n in list_netns() if n.startswith(prefix + "-")]
    _kill_netns_processes(names)
    removed: list[str] = []
    for name in names:
        run_ip("netns", "delete", name, check=False)
        if not netns_exists(name):
            removed.append(f"netns {name}")
    for sock in WIREGUARD_RUN_DIR.glob(f"{prefix}*.sock"):
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
            removed.append(str(sock))
    for tmp in Path(tempfile.gettempdir()).glob(f"qkd-gateway-{prefix}-*") if temp_dirs else ():
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(str(tmp))
    left = [n for n in list_netns() if n.startswith(prefix + "-")]
    if left:
        raise NetnsError(f"could not delete namespaces {left}; see `ip netns pids NAME`")
    return removed


@dataclass(frozen=True)
class LabNode:
    """One namespace attached to the WAN: a site, or the KMS."""

    name: str
    netns: str
    port: str  # the bridge port (in the wan namespace) of this node's veth
    address: ipaddress.IPv4Interface


class Topology:
    """Build with ``with Topology([...]) as topo`` or ``async with``; exit removes everything.

    Args:
        sites: site names, in order; site ``i`` gets WAN address 198.18.0.(10+i).
        prefix: name prefix; a fresh one by default (see :func:`new_prefix`).
    """

    def __init__(self, sites: Sequence[str], prefix: str | None = None) -> None:
        if not 1 <= len(sites) <= MAX_SITES:
            raise ValueError(f"the lab holds 1 to {MAX_SITES} sites, not {len(sites)}")
        if len(set(sites)) != len(sites) or "wan" in sites or "kms" in sites:
            raise ValueError("site names must be unique and not 'wan' or 'kms'")
        self.prefix = prefix or new_prefix()
        _check_prefix(self.prefix)
        self.wan_netns = f"{self.prefix}-wan"
        self.kms = LabNode("kms", f"{self.prefix}-kms", "pkms", KMS_ADDRESS)
        self.sites = {
            name: LabNode(name, f"{self.prefix}-{name}", f"p{i}", site_wan_address(i))
            for i, name in enumerate(sites)
        }
        self.built = False

    @property
    def nodes(self) -> list[LabNode]:
        return [*self.sites.values(), self.kms]

    def build(self) -> None:
        """Create the namespaces, the bridge and one veth per node. On any failure everything
        made so far is removed before the error propagates."""
        try:
            run_ip("netns", "add", self.wan_netns)
            self.built = True
            run_ip("-n", self.wan_netns, "link", "set", "lo", "up")
            run_ip("-n", self.wan_netns, "link", "add", BRIDGE, "type", "bridge")
            run_ip("-n", self.wan_netns, "link", "set", BRIDGE, "up")
            for node in self.nodes:
                self._attach(node)
        except BaseException:
            self.close()
            raise

    def _attach(self, node: LabNode) -> None:
        run_ip("netns", "add", node.netns)
        run_ip("-n", node.netns, "link", "set", "lo", "up")
        run_ip("link", "add", WAN_IF, "netns", node.netns, "type", "veth",
               "peer", "name", node.port, "netns", self.wan_netns)
        run_ip("-n", self.wan_netns, "link", "set", node.port, "master", BRIDGE)
        run_ip("-n", self.wan_netns, "link", "set", node.port, "up")
        run_ip("-n", node.netns, "addr", "add", str(node.address), "dev", WAN_IF)
        run_ip("-n", node.netns, "link", "set", WAN_IF, "up")

    def set_wan_link(self, node: str, up: bool) -> None:
        """Cut (or restore) one node's WAN link at its bridge port: packets vanish silently,
        as on a failed fibre, while the node keeps its address and routes."""
        port = self.kms.port if node == "kms" else self.sites[node].port
        run_ip("-n", self.wan_netns, "link", "set", port, "up" if up else "down")

    def close(self) -> None:
        """Remove the lab (idempotent)."""
        if self.built:
            # The temp directory (logs, keys) belongs to whoever made it; see DemoRun.
            cleanup(self.prefix, temp_dirs=False)
            self.built = False

    def __enter__(self) -> Topology:
        self.build()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Topology:
        await asyncio.to_thread(self.build)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Shielded: a second Ctrl-C during teardown must not leave half a lab behind.
        await asyncio.shield(asyncio.to_thread(self.close))
