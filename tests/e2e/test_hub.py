"""A hub site: three spokes on ONE WireGuard interface of the hub, one peer each (as wg-quick and
networkd hubs run), keyed by one daemon per site; real wireguard-go, real packets."""

from __future__ import annotations

import base64
import subprocess

import pytest

from tests.e2e.lab import Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


async def test_hub_with_three_spokes_on_one_interface_rotates_per_peer() -> None:
    async with Lab(rekey_interval=2, reject_after=6, sites=4, hub_interface=True) as lab:
        await lab.start_daemons()
        tunnels = lab.plan.tunnels
        hub = tunnels[0].hub
        hub_if = tunnels[0].interface(hub)

        def rotated(times: int) -> bool:
            return all(len([e for e in lab.events(hub, "tunnel_rekeyed")
                            if e["tunnel"] == t.name]) >= times for t in tunnels)

        await lab.wait_for(lambda: rotated(3), 90, "three rotations of every spoke")
        spokes = {t.spoke: lab.plan.by_name[t.spoke] for t in tunnels}
        pub = {name: (s.directory / "wireguard.pub").read_text().strip()
               for name, s in spokes.items()}

        def matching() -> bool:
            at_hub = lab.psks(hub, hub_if)
            return len(at_hub) == 3 and all(
                lab.psks(t.spoke, t.interface(t.spoke)).get(
                    (lab.plan.by_name[hub].directory / "wireguard.pub").read_text().strip())
                == at_hub.get(pub[t.spoke]) for t in tunnels)

        await lab.wait_for(matching, 20, "every spoke's PSK equal at both ends")
        at_hub = lab.psks(hub, hub_if)
        # One interface, three peers, three different keys: each tunnel owns its slot.
        assert len(set(at_hub.values())) == 3
        assert all(len(base64.b64decode(v)) == 32 for v in at_hub.values())
        # Traffic through every spoke's peer on the shared interface.
        for t in tunnels:
            out = lab.plan.by_name[hub].netns
            done = subprocess.run(
                ["ip", "netns", "exec", out, "ping", "-c", "3", "-i", "0.2", "-W", "2",
                 str(t.address(t.spoke).ip)], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stdout
