"""Can this kernel carry the data plane the demo was asked for? If not, one line says so and
names `make demo-vm`, which runs the same demo in the kernel lab (docs/kernel-lab.md).

* ``--dataplane xfrm|mixed`` needs ESP with AES-GCM. The probe is injected
  (:data:`EspProbe`): the CLI passes the data plane's own ``esp_unavailable`` (a throw-away SA in
  a private namespace, before anything is built; the demo package may not import the data plane,
  docs/architecture.md). Without one, :func:`ip_esp_probe` asks ``ip xfrm state add`` in the
  lab's WAN namespace, as an operator would.
* ``--dataplane kernel`` needs kernel WireGuard: ``ip link add ... type wireguard`` in the WAN
  namespace (the daemons then use the netlink backend, ``backend: kernel`` in their configs).
* ``--dataplane wireguard`` takes kernel WireGuard if it is there, else wireguard-go.

Also the ESP tunnels' inner ends: :func:`prepare_esp_ends` gives each end its tunnel address (on
the namespace's loopback: the host kernel has no dummy links) and a route to the peer's, the
routing an operator sets up for a policy-based IPsec tunnel; the daemon's out/in/fwd policies
then decide that those packets leave only as ESP.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Awaitable, Callable

from gateway.demo.errors import NetnsError, ToolMissing
from gateway.demo.netns import run_ip
from gateway.demo.pinger import DEFAULT_TIMEOUT_S
from gateway.demo.sites import LabPlan
from gateway.demo.topology import WAN_IF

__all__ = ["DEMO_VM_DATAPLANE", "ESP_DATAPLANES", "KERNEL_LAB_PING_TIMEOUT_S", "EspProbe",
           "choose_backend", "demo_vm_command", "esp_refusal", "in_kernel_lab", "ip_esp_probe",
           "kernel_wireguard", "ping_timeout", "prepare_esp_ends", "require_esp"]

EspProbe = Callable[[], Awaitable[str | None]]
ESP_DATAPLANES = ("xfrm", "mixed")
DEMO_VM_DATAPLANE = "xfrm"  # what `make demo-vm` runs unless told otherwise (Makefile)
# A ping answered later than this is lost. On a host 1 s (DEFAULT_TIMEOUT_S, as `ping -W 1`). In
# the kernel lab (QEMU TCG, 5-10x slower, on 2 shared cores) the emulator alone holds replies past
# 1 s: 23 of 1,212 pings in one 3-site run, every one answered, both tunnels at the same second.
KERNEL_LAB_PING_TIMEOUT_S = 5.0
# The first ESP SA of a boot instantiates the kernel's AES-GCM template and runs its self-tests:
# `ip xfrm state add` then took over 10 s in the kernel lab under load (QEMU TCG).
ESP_PROBE_TIMEOUT_S = 60.0
# A throwaway, public test key for the `ip` probe: 36 bytes as rfc4106 takes them.
_ESP_PROBE_KEY = "0x" + "00" * 36


def in_kernel_lab() -> bool:
    """True inside the kernel lab's guest (scripts/kernel_lab.sh sets QKD_KERNEL_LAB=1)."""
    return os.environ.get("QKD_KERNEL_LAB") == "1"


def ping_timeout() -> float:
    return KERNEL_LAB_PING_TIMEOUT_S if in_kernel_lab() else DEFAULT_TIMEOUT_S


def demo_vm_command(dataplane: str) -> str:
    if dataplane == DEMO_VM_DATAPLANE:
        return "make demo-vm"
    return f"make demo-vm DEMO_VM_DATAPLANE={dataplane}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def esp_refusal(dataplane: str, reason: str) -> str:
    """The one-line refusal of an ESP demo on a kernel without ESP/AES-GCM."""
    # The probe's reason ends with advice for the daemon; the kernel's own words suffice here.
    found = re.search(r"failed: (.+?);", reason)
    why = found.group(1) if found else reason
    return _one_line(
        f"--dataplane {dataplane} needs ESP with AES-GCM in the kernel, which this kernel "
        f"lacks ({why}); `{demo_vm_command(dataplane)}` runs the same demo in the kernel lab")


async def require_esp(dataplane: str, probe: EspProbe) -> bool:
    """:class:`ToolMissing` with the one-line refusal if ``probe`` finds no ESP/AES-GCM; True if
    it found them, False if the probe itself failed (no answer in time: the first ESP SA of a
    boot can be slow under emulation), so that another probe decides."""
    try:
        reason = await probe()
    except Exception:  # the injected probe's own error types are not ours to name
        return False
    if reason is not None:
        raise ToolMissing(esp_refusal(dataplane, reason))
    return True


def ip_esp_probe(netns: str) -> str | None:
    """None if ``ip xfrm state add`` takes a tunnel-mode AES-GCM ESP SA in ``netns`` (removed
    again), else iproute2's message."""
    state = ["-n", netns, "xfrm", "state"]
    ends = ["src", "198.18.0.250", "dst", "198.18.0.251", "proto", "esp", "spi", "0x100"]
    try:
        run_ip(*state, "add", *ends, "mode", "tunnel", "aead", "rfc4106(gcm(aes))",
               _ESP_PROBE_KEY, "128", timeout=ESP_PROBE_TIMEOUT_S)
    except NetnsError as exc:
        text = str(exc)
        if "failed: " not in text:  # no answer at all: not the kernel's refusal
            return f"failed: `ip xfrm state add` did not answer in {ESP_PROBE_TIMEOUT_S:g} s;"
        return f"failed: {text.rsplit('failed: ', 1)[-1]};"
    run_ip(*state, "delete", *ends, check=False)
    return None


def kernel_wireguard(netns: str, probe_name: str) -> str | None:
    """None if a kernel WireGuard link can be made in ``netns`` (removed again), else
    iproute2's message."""
    try:
        run_ip("-n", netns, "link", "add", probe_name, "type", "wireguard")
    except NetnsError as exc:
        return str(exc).rsplit("failed: ", 1)[-1]
    run_ip("-n", netns, "link", "del", probe_name, check=False)
    return None


def choose_backend(dataplane: str, netns: str, probe_name: str) -> str:
    """The WireGuard backend the sites' configs name: ``kernel`` if the kernel has WireGuard,
    else ``userspace`` (wireguard-go); ``--dataplane kernel`` refuses the fallback in one line."""
    missing = kernel_wireguard(netns, probe_name)
    if missing is None:
        return "kernel"
    if dataplane == "kernel":
        raise ToolMissing(_one_line(
            f"--dataplane kernel needs WireGuard in the kernel, which this kernel lacks "
            f"(`ip link add ... type wireguard`: {missing}); `{demo_vm_command('kernel')}` runs "
            "the same demo in the kernel lab, --dataplane wireguard runs it here on "
            "wireguard-go"))
    if shutil.which("wireguard-go") is None:
        raise ToolMissing("no kernel WireGuard and no wireguard-go: "
                          "apt-get install wireguard-go wireguard-tools")
    return "userspace"


def prepare_esp_ends(plan: LabPlan) -> None:
    """For every ESP tunnel, at each end: the own tunnel address (a /32 on loopback), and a
    host route to the peer's tunnel address via the peer's WAN address, from the own one."""
    for t in plan.tunnels:
        if t.dataplane != "esp":
            continue
        for name in (t.hub, t.spoke):
            ns, peer = plan.by_name[name].netns, plan.by_name[t.peer(name)]
            run_ip("-n", ns, "link", "set", "lo", "up")
            run_ip("-n", ns, "addr", "add", f"{t.address(name).ip}/32", "dev", "lo")
            run_ip("-n", ns, "route", "add", f"{t.address(peer.name).ip}/32", "via",
                   str(peer.wan.ip), "dev", WAN_IF, "src", str(t.address(name).ip))
