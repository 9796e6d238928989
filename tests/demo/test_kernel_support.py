"""On a kernel without ESP/AES-GCM or kernel WireGuard (this host), the demo modes that need them
refuse in ONE line naming `make demo-vm`, exit 2 and leave nothing behind; `make demo-vm` runs
them in the kernel lab (tests/vm/test_demo_vm.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.dataplane.xfrm import esp_unavailable
from gateway.demo import DemoOptions, ToolMissing, run_demo
from gateway.demo.netns import list_netns
from gateway.demo.support import esp_refusal, prepare_esp_ends
from tests.demo.conftest import leftovers

DEMO = [sys.executable, "-m", "gateway", "demo"]
HOST_HAS_ESP = asyncio.run(esp_unavailable()) is None if os.geteuid() == 0 else True
HOST_HAS_WG = Path("/sys/module/wireguard").exists()


@pytest.mark.unit
def test_the_refusal_is_one_line_with_the_kernels_words_and_the_command() -> None:
    reason = ("xfrm: install an ESP SA with AES-GCM failed: ENOSYS (Requested AEAD algorithm "
              "not found); this kernel lacks ESP or AES-GCM: load the modules (`modprobe esp4 "
              "esp6 gcm xfrm_user`), or run where they exist (`make test-vm` runs the kernel lab)")
    assert esp_refusal("xfrm", reason) == (
        "--dataplane xfrm needs ESP with AES-GCM in the kernel, which this kernel lacks (ENOSYS "
        "(Requested AEAD algorithm not found)); `make demo-vm` runs the same demo in the kernel "
        "lab")
    assert "`make demo-vm DEMO_VM_DATAPLANE=mixed`" in esp_refusal("mixed", "no\nXFRM")
    assert "\n" not in esp_refusal("mixed", "no\nXFRM")


@pytest.mark.netns
@pytest.mark.skipif(HOST_HAS_ESP, reason="this kernel has ESP/AES-GCM: nothing to refuse")
async def test_esp_probe_refuses_before_anything_is_built() -> None:
    before = set(list_netns())
    with pytest.raises(ToolMissing) as caught:
        await run_demo(DemoOptions(topology="pair", dataplane="xfrm", duration=5),
                       esp_probe=esp_unavailable)
    message = str(caught.value)
    assert "\n" not in message and "`make demo-vm`" in message
    assert "Requested AEAD algorithm not found" in message  # the kernel's own words
    assert set(list_netns()) == before


@pytest.mark.netns
@pytest.mark.skipif(HOST_HAS_ESP, reason="this kernel has ESP/AES-GCM: nothing to refuse")
async def test_a_probe_that_cannot_run_leaves_the_decision_to_ip_xfrm() -> None:
    async def no_answer() -> str | None:
        raise TimeoutError("the probe got no answer in time")

    with pytest.raises(ToolMissing) as caught:
        await run_demo(DemoOptions(topology="pair", dataplane="mixed", duration=5),
                       esp_probe=no_answer)
    assert "Requested AEAD algorithm not found" in str(caught.value)  # iproute2's words
    assert "`make demo-vm DEMO_VM_DATAPLANE=mixed`" in str(caught.value)


@pytest.mark.netns
@pytest.mark.parametrize(("dataplane", "needs", "command"), [
    pytest.param("xfrm", "ESP with AES-GCM", "`make demo-vm`",
                 marks=pytest.mark.skipif(HOST_HAS_ESP, reason="this kernel has ESP")),
    pytest.param("mixed", "ESP with AES-GCM", "`make demo-vm DEMO_VM_DATAPLANE=mixed`",
                 marks=pytest.mark.skipif(HOST_HAS_ESP, reason="this kernel has ESP")),
    pytest.param("kernel", "WireGuard in the kernel", "`make demo-vm DEMO_VM_DATAPLANE=kernel`",
                 marks=pytest.mark.skipif(HOST_HAS_WG, reason="this kernel has WireGuard")),
])
def test_the_cli_says_so_in_one_line_and_exits_2(dataplane: str, needs: str,
                                                 command: str) -> None:
    proc = subprocess.Popen([*DEMO, "--topology", "pair", "--dataplane", dataplane,
                             "--duration", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"demo: error: --dataplane {dataplane} needs {needs}")
    assert command in lines[0] and "runs the same demo in the kernel lab" in lines[0]
    assert leftovers(f"qgd{proc.pid}") == []  # the lab's prefix is qgd<pid of the demo><x>


@pytest.mark.netns
async def test_esp_ends_get_their_tunnel_address_and_a_route_to_the_peers() -> None:
    from gateway.demo import Topology, plan_for
    from gateway.demo.netns import run_ip

    async with Topology(["bucharest", "cluj-napoca", "iasi"]) as topo:
        plan = plan_for(DemoOptions(topology="star", sites=3, dataplane="mixed"), topo.prefix,
                        Path("/nonexistent"), "userspace",
                        {n: node.netns for n, node in topo.sites.items()})
        await asyncio.to_thread(prepare_esp_ends, plan)
        hub, cluj, iasi = (topo.sites[n].netns for n in ("bucharest", "cluj-napoca", "iasi"))
        assert "10.77.1.1/32" in run_ip("-n", hub, "-o", "addr", "show", "dev", "lo")
        assert "10.77.1.2/32" in run_ip("-n", cluj, "-o", "addr", "show", "dev", "lo")
        route = run_ip("-n", hub, "route", "get", "10.77.1.2")
        assert "via 198.18.0.11 dev wan0 src 10.77.1.1" in route
        assert "via 198.18.0.10 dev wan0 src 10.77.1.2" in run_ip("-n", cluj, "route", "get",
                                                                  "10.77.1.1")
        # Tunnel 2 is WireGuard under mixed: its ends are the daemons' business.
        assert "10.77.2" not in run_ip("-n", iasi, "-o", "addr", "show")
