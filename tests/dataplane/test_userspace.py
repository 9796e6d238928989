"""UserspaceBackend against real wireguard-go in two network namespaces (needs root)."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import time

import pytest
import structlog

from gateway.dataplane import (
    BackendCallFailed,
    InterfaceConflict,
    InterfaceNotFound,
    PeerNotFound,
    SpecError,
    UserspaceBackend,
    WgInterfaceSpec,
    WgPeerSpec,
)
from gateway.dataplane.uapi import UAPI_DIR, UapiClient
from gateway.keymaterial import Secret
from tests.dataplane.conftest import Tunnel
from tests.netns_harness import NetnsLab, wg_keypair, wg_show

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


def b64(psk: Secret) -> str:
    return base64.b64encode(psk.reveal()).decode()


async def rotate(t: Tunnel, *, force: bool) -> Secret:
    """New PSK at both ends (responder first), optionally forcing a handshake from a."""
    psk = t.psk()
    await t.b.backend.set_psk(t.b.ifname, t.a.public, psk)
    await t.a.backend.set_psk(t.a.ifname, t.b.public, psk)
    if force:
        await t.a.backend.force_handshake(t.a.ifname, t.b.public)
    return psk


async def wait_handshake_after(t: Tunnel, after: float) -> float:
    for _ in range(100):
        (status,) = await t.a.backend.peer_status(t.a.ifname)
        if (status.last_handshake or 0) > after:
            return status.last_handshake or 0
        await asyncio.sleep(0.05)
    raise AssertionError("no new handshake within 5 s")


async def test_tunnel_pings_and_psk_is_the_same_at_both_ends(tunnel: Tunnel) -> None:
    a, b = tunnel.a, tunnel.b
    assert "wireguard" not in a.ns.run("ip", "-d", "link", "show", a.ifname)  # a TUN device
    assert a.ns.ping("10.77.0.2") == 0
    assert wg_show(a.ns, a.ifname, "preshared-keys") == {b.public: "(none)"}
    assert wg_show(b.ns, b.ifname, "preshared-keys") == {a.public: "(none)"}
    assert await a.backend.get_psk(a.ifname, b.public) is None

    psk = await rotate(tunnel, force=False)
    assert wg_show(a.ns, a.ifname, "preshared-keys") == {b.public: b64(psk)}
    assert wg_show(b.ns, b.ifname, "preshared-keys") == {a.public: b64(psk)}
    assert await b.backend.get_psk(b.ifname, a.public) == psk
    assert a.ns.ping("10.77.0.2") == 0

    (status,) = await a.backend.peer_status(a.ifname)
    assert status.public_key == b.public and status.endpoint == "192.168.77.2:51821"
    assert status.rx_bytes > 0 and status.tx_bytes > 0 and status.last_handshake
    assert await a.backend.apply(a.spec) == []  # idempotent, and apply keeps the PSK
    assert await a.backend.get_psk(a.ifname, b.public) == psk


async def test_five_rotations_under_20_pps_ping_lose_nothing(tunnel: Tunnel) -> None:
    ping = tunnel.a.ns.start_ping("10.77.0.2", count=60)  # 3 s at 20/s
    try:
        for _ in range(5):
            await asyncio.sleep(0.4)
            psk = await rotate(tunnel, force=False)
            assert wg_show(tunnel.b.ns, tunnel.b.ifname, "preshared-keys") == {
                tunnel.a.public: b64(psk)
            }
    finally:
        sent, lost, summary = await ping.aresult()
    assert (sent, lost) == (60, 0), summary


async def test_forced_handshake_runs_under_the_new_psk(tunnel: Tunnel) -> None:
    """force_handshake (used to fail closed) re-handshakes under the current PSK at once. It
    ends the peer's sessions at one end, so a packet the other end sends on the old session in
    that instant can be dropped: at most one in flight per forced handshake is tolerated (the
    daemon's rotations do not force; see docs/dataplane.md)."""
    a, b = tunnel.a, tunnel.b
    assert a.ns.ping("10.77.0.2", count=1) == 0
    ping = a.ns.start_ping("10.77.0.2", count=80)  # 4 s at 20/s
    seen = []
    try:
        for _ in range(2):
            (before,) = await a.backend.peer_status(a.ifname)
            # `wg show` reports whole seconds: wait past the next second so an advance shows.
            await asyncio.sleep(max(0.0, (before.last_handshake or 0) + 1.05 - time.time()))
            await rotate(tunnel, force=True)
            seen.append(await wait_handshake_after(tunnel, before.last_handshake or 0))
    finally:
        sent, lost, summary = await ping.aresult()
    assert sent == 80 and lost <= 2, summary
    assert seen[1] > seen[0]
    assert int(wg_show(a.ns, a.ifname, "latest-handshakes")[b.public]) == int(seen[-1])
    # The responder saw the same handshake.
    assert abs(int(wg_show(b.ns, b.ifname, "latest-handshakes")[a.public]) - int(seen[-1])) <= 1


async def test_handshake_really_uses_the_psk(tunnel: Tunnel) -> None:
    """Negative control: with different PSKs at the two ends a forced handshake fails and the
    tunnel stops; matching them again and forcing a handshake brings it back."""
    a, b = tunnel.a, tunnel.b
    await a.backend.set_psk(a.ifname, b.public, tunnel.psk())
    await b.backend.set_psk(b.ifname, a.public, tunnel.psk())
    await a.backend.force_handshake(a.ifname, b.public)
    assert a.ns.ping("10.77.0.2", count=2, interval=0.2, wait=1) == 2
    await rotate(tunnel, force=True)
    assert a.ns.ping("10.77.0.2", count=3) == 0


async def test_drift_is_restored_and_reported(tunnel: Tunnel) -> None:
    a, b = tunnel.a, tunnel.b
    psk = await rotate(tunnel, force=False)
    _, stranger = wg_keypair()
    a.ns.run("wg", "set", a.ifname, "listen-port", "40000", "peer", b.public,
             "allowed-ips", "10.99.0.0/16", "endpoint", "192.168.77.2:9", "persistent-keepalive",
             "25")
    a.ns.run("wg", "set", a.ifname, "peer", stranger, "allowed-ips", "10.98.0.0/16")
    a.ns.run("ip", "addr", "del", "10.77.0.1/24", "dev", a.ifname)
    a.ns.run("ip", "addr", "add", "10.55.0.1/24", "dev", a.ifname)

    corrections = await a.backend.apply(a.spec)
    text = "\n".join(corrections)
    for expected in ("listen_port 40000 -> 51820", "allowed_ips ['10.99.0.0/16']",
                     "endpoint 192.168.77.2:9 -> 192.168.77.2:51821",
                     "persistent_keepalive 25 -> 0", f"removed unexpected peer {stranger}",
                     "address 10.77.0.1/24 was missing", "unexpected address 10.55.0.1/24"):
        assert expected in text, (expected, corrections)
    assert [e["event"] for e in tunnel.logs].count("wg_drift_corrected") == len(corrections)
    assert "listening port: 51820" in a.ns.run("wg", "show", a.ifname)
    assert wg_show(a.ns, a.ifname, "allowed-ips") == {b.public: "10.77.0.2/32"}
    assert wg_show(a.ns, a.ifname, "preshared-keys") == {b.public: b64(psk)}  # PSK untouched
    # The keepalive set behind our back made wireguard-go send a handshake to the wrong endpoint;
    # its retry comes after REKEY_TIMEOUT (5 s), so the first packet may wait that long.
    assert a.ns.ping("10.77.0.2", count=1, wait=7) == 0
    assert a.ns.ping("10.77.0.2", count=2) == 0
    assert await a.backend.apply(a.spec) == []

    # A deleted peer comes back without a PSK: the daemon must set one (documented policy).
    a.ns.run("wg", "set", a.ifname, "peer", b.public, "remove")
    assert any("was missing; re-added" in c for c in await a.backend.apply(a.spec))
    assert await a.backend.get_psk(a.ifname, b.public) is None


async def test_adopt_mode_touches_only_psk_slots(lab: NetnsLab) -> None:
    ns = lab.namespace("adopt")
    name = lab.ifname("wgad")
    key, _ = wg_keypair()
    _, peer = wg_keypair()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(ns.cmd("wireguard-go", name), check=True, capture_output=True, env=env)
    keyfile = lab_key_file(key)
    ns.run("wg", "set", name, "listen-port", "45000", "private-key", keyfile, "peer", peer,
           "allowed-ips", "10.1.0.0/16")
    before = ns.run("wg", "showconf", name)
    backend = UserspaceBackend(ns.name)
    spec = WgInterfaceSpec(name=name, private_key=None, listen_port=51820,
                           addresses=("10.2.0.1/24",),
                           peers=(WgPeerSpec(peer, None, ("10.3.0.0/16",), None),), adopt=True)
    assert await backend.apply(spec) == []
    assert ns.run("wg", "showconf", name) == before
    assert "10.2.0.1" not in ns.run("ip", "addr", "show", name)
    psk = Secret.random(32)
    await backend.set_psk(name, peer, psk)
    assert wg_show(ns, name, "preshared-keys") == {peer: b64(psk)}
    assert "listening port: 45000" in ns.run("wg", "show", name)
    with pytest.raises(InterfaceConflict, match="adopted"):
        await backend.remove(name)
    _, unknown = wg_keypair()
    with pytest.raises(PeerNotFound, match=unknown.replace("+", r"\+")):
        await backend.apply(WgInterfaceSpec(name=name, private_key=None, adopt=True,
                                            peers=(WgPeerSpec(unknown),)))
    with pytest.raises(InterfaceNotFound, match="adopt=true"):
        await backend.apply(WgInterfaceSpec(name=lab.ifname("wgno"), private_key=None,
                                            adopt=True))


def lab_key_file(key: bytes) -> str:
    import os
    import tempfile

    fd, path = tempfile.mkstemp(prefix="wgkey-")
    os.write(fd, base64.b64encode(key) + b"\n")
    os.close(fd)
    return path


async def test_name_in_use_in_another_namespace_is_refused(tunnel: Tunnel) -> None:
    other = tunnel.lab.namespace("c")
    spec = WgInterfaceSpec(name=tunnel.a.ifname, private_key=Secret.random(32))
    with pytest.raises(InterfaceConflict, match="another network namespace"):
        await UserspaceBackend(other.name).apply(spec)
    await UserspaceBackend(other.name).remove(tunnel.a.ifname)  # must not touch a's socket
    assert tunnel.a.ns.ping("10.77.0.2", count=1) == 0


async def test_stale_socket_is_replaced(lab: NetnsLab) -> None:
    ns = lab.namespace("stale")
    name = lab.ifname("wgst")
    path = UAPI_DIR / f"{name}.sock"
    UAPI_DIR.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as dead:  # bound, never listening: a crashed daemon
        dead.bind(str(path))
    assert path.exists() and not await UapiClient(name).alive()
    with structlog.testing.capture_logs() as logs:
        await UserspaceBackend(ns.name).apply(
            WgInterfaceSpec(name=name, private_key=Secret.random(32), listen_port=47000)
        )
    assert "wg_stale_socket_removed" in [e["event"] for e in logs]
    assert "listening port: 47000" in ns.run("wg", "show", name)
    await UserspaceBackend(ns.name).remove(name)
    assert not path.exists() and name not in ns.run("ip", "link")


async def test_errors_are_typed_and_never_echo_keys(tunnel: Tunnel) -> None:
    a, b = tunnel.a, tunnel.b
    _, unknown = wg_keypair()
    psk = tunnel.psk()
    with pytest.raises(PeerNotFound) as info:
        await a.backend.set_psk(a.ifname, unknown, psk)
    assert psk.reveal().hex() not in str(info.value)
    with pytest.raises(SpecError, match="32 bytes"):
        await a.backend.set_psk(a.ifname, b.public, Secret.random(16))
    with pytest.raises(SpecError, match="not base64"):
        await a.backend.get_psk(a.ifname, "not a key")
    with pytest.raises(BackendCallFailed, match="errno=-") as failed:
        await UapiClient(a.ifname).set(f"private_key={'zz' * 32}\n")
    assert failed.value.errno is not None and failed.value.errno > 0
    with pytest.raises(InterfaceNotFound, match="no wireguard-go listening"):
        await a.backend.peer_status(tunnel.lab.ifname("wgnone"))
    with pytest.raises(SpecError, match="resolve host names"):
        await a.backend.apply(WgInterfaceSpec(
            name=a.ifname, private_key=Secret(a.private),
            peers=(WgPeerSpec(b.public, "peer.example:51820"),)))


async def test_failed_creation_leaves_no_interface(lab: NetnsLab) -> None:
    ns = lab.namespace("busy")
    name = lab.ifname("wgbusy")

    def bind_port() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::", 45555))
        return sock

    with ns.call(bind_port), pytest.raises(BackendCallFailed, match=r"EADDRINUSE.*another port"):
        await UserspaceBackend(ns.name).apply(
            WgInterfaceSpec(name=name, private_key=Secret.random(32), listen_port=45555)
        )
    assert name not in ns.run("ip", "link")
