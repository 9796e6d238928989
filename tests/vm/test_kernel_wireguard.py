"""Kernel WireGuard through KernelBackend (generic netlink), two namespaces inside the lab VM.

Everything runs 5-10x slower under QEMU TCG, so the scenario is one tunnel exercised end to end
rather than many small tests.
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
import structlog

from gateway.dataplane import (
    InterfaceConflict,
    InterfaceNotFound,
    KernelBackend,
    PeerNotFound,
    WgInterfaceSpec,
    WgPeerSpec,
    select_backend,
)
from gateway.keymaterial import Secret
from tests.netns_harness import NetnsLab, wg_keypair, wg_show

pytestmark = [pytest.mark.vm, pytest.mark.timeout(240)]


def _specs(ia: str, ib: str, ka: bytes, pa: str, kb: bytes, pb: str) -> tuple[
    WgInterfaceSpec, WgInterfaceSpec
]:
    a = WgInterfaceSpec(
        name=ia, private_key=Secret(ka), listen_port=51820, addresses=("10.66.0.1/24",),
        peers=(WgPeerSpec(pb, "192.168.66.2:51821", ("10.66.0.2/32",), None),),
    )
    b = WgInterfaceSpec(
        name=ib, private_key=Secret(kb), listen_port=51821, addresses=("10.66.0.2/24",),
        peers=(WgPeerSpec(pa, None, ("10.66.0.1/32",), None),),
    )
    return a, b


async def test_kernel_tunnel_psk_rotation_and_drift() -> None:
    assert select_backend("auto").kind == "kernel"
    with NetnsLab(prefix="vm") as lab, structlog.testing.capture_logs() as logs:
        na, nb = lab.namespace("a"), lab.namespace("b")
        lab.veth(na, "192.168.66.1/24", nb, "192.168.66.2/24")
        ia, ib = lab.ifname("wga"), lab.ifname("wgb")
        (ka, pa), (kb, pb) = wg_keypair(), wg_keypair()
        spec_a, spec_b = _specs(ia, ib, ka, pa, kb, pb)
        wa, wb = KernelBackend(na.name), KernelBackend(nb.name)
        assert await wa.apply(spec_a) == []
        assert await wb.apply(spec_b) == []
        assert "wireguard" in na.run("ip", "-d", "link", "show", ia)
        assert await wa.apply(spec_a) == []  # idempotent

        assert wg_show(na, ia, "preshared-keys") == {pb: "(none)"}
        assert await wa.get_psk(ia, pb) is None
        assert na.ping("10.66.0.2", count=3) == 0

        used: list[Secret] = []
        psk = Secret.random(32)
        used.append(psk)
        await wa.set_psk(ia, pb, psk)
        await wb.set_psk(ib, pa, psk)
        b64 = base64.b64encode(psk.reveal()).decode()
        assert wg_show(na, ia, "preshared-keys") == {pb: b64}
        assert wg_show(nb, ib, "preshared-keys") == {pa: b64}
        assert await wb.get_psk(ib, pa) == psk
        assert await wa.psks(ia) == {pb: psk}  # one read of every slot (the reconcile pass)

        # Three rotations under a continuous 20/s ping, as the daemon does them: the PSK is set
        # at both ends and the running session is left alone (WireGuard mixes the PSK into its
        # next handshake). Nothing may be lost.
        ping = na.start_ping("10.66.0.2", count=80)
        try:
            for _ in range(3):
                await asyncio.sleep(1.0)
                psk = Secret.random(32)
                used.append(psk)
                await wb.set_psk(ib, pa, psk)
                await wa.set_psk(ia, pb, psk)
        finally:
            sent, lost, summary = await ping.aresult()
        assert lost == 0, summary
        assert sent == 80
        # One generic netlink socket per backend, kept across every call so far.
        assert (wa.sockets_opened, wb.sockets_opened) == (1, 1)
        assert wg_show(nb, ib, "preshared-keys") == {pa: base64.b64encode(psk.reveal()).decode()}

        # A forced handshake (what failing closed uses to end a session) runs under the current
        # PSK: the handshake time advances and both ends agree on it, and traffic flows after.
        # Packets in flight at that instant may be dropped (the peer's old session is gone), so
        # zero loss is not asserted here.
        before = (await wa.peer_status(ia))[0].last_handshake or 0.0
        await asyncio.sleep(max(0.0, before + 1.1 - time.time()))  # `wg show` has 1 s resolution
        await wa.force_handshake(ia, pb)
        assert na.ping("10.66.0.2", count=3) == 0
        for _ in range(400):  # up to ~20 s: QEMU TCG is slow and noisy
            status = (await wa.peer_status(ia))[0]
            if (status.last_handshake or 0) > before:
                break
            await asyncio.sleep(0.05)
        assert (status.last_handshake or 0) > before, "no handshake after force_handshake"
        assert int(wg_show(na, ia, "latest-handshakes")[pb]) == int(status.last_handshake or 0)

        # Drift behind the backend's back is restored and reported.
        na.run("wg", "set", ia, "listen-port", "40000", "peer", pb, "allowed-ips", "10.99.0.0/16")
        corrections = await wa.apply(spec_a)
        assert any("listen_port 40000 -> 51820" in c for c in corrections), corrections
        assert any("allowed_ips" in c for c in corrections), corrections
        assert "listening port: 51820" in na.run("wg", "show", ia)
        assert wg_show(na, ia, "allowed-ips") == {pb: "10.66.0.2/32"}
        assert wg_show(na, ia, "preshared-keys")[pb] == base64.b64encode(psk.reveal()).decode()
        assert na.ping("10.66.0.2", count=3) == 0

        await wa.remove(ia)
        assert ia not in na.run("ip", "link")

    text = repr(logs)
    for key in [*used, Secret(ka), Secret(kb)]:
        raw = key.reveal()
        assert raw.hex() not in text and base64.b64encode(raw).decode() not in text


async def test_kernel_adopt_touches_only_psk() -> None:
    with NetnsLab(prefix="vm") as lab:
        ns = lab.namespace("adopt")
        name = lab.ifname("wgad")
        _, peer = wg_keypair()
        ns.run("ip", "link", "add", name, "type", "wireguard")
        ns.run("wg", "set", name, "listen-port", "45000", "peer", peer, "allowed-ips",
               "10.1.0.0/16")
        before = ns.run("wg", "showconf", name)
        backend = KernelBackend(ns.name)
        spec = WgInterfaceSpec(name=name, private_key=None, listen_port=51820,
                               peers=(WgPeerSpec(peer, None, ("10.3.0.0/16",)),), adopt=True)
        assert await backend.apply(spec) == []
        assert ns.run("wg", "showconf", name) == before
        psk = Secret.random(32)
        await backend.set_psk(name, peer, psk)
        assert wg_show(ns, name, "preshared-keys") == {peer: base64.b64encode(psk.reveal()).decode()}
        assert "listening port: 45000" in ns.run("wg", "show", name)
        with pytest.raises(InterfaceConflict):
            await backend.remove(name)
        with pytest.raises(InterfaceNotFound):
            await backend.peer_status(lab.ifname("wgnone"))
        # A peer that is not on the interface: refused, and not created by the PSK write. The
        # kernel's error answers leave the socket in step: still the one socket.
        _, stranger = wg_keypair()
        with pytest.raises(PeerNotFound):
            await backend.set_psk(name, stranger, Secret.random(32))
        assert stranger not in ns.run("wg", "show", name)
        assert await backend.get_psk(name, peer) == psk
        assert backend.sockets_opened == 1
        backend.close()
