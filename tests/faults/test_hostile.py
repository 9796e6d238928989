"""A hostile host on the WAN (the KMS namespace's address, 198.18.0.2) attacks both gateways'
peer port while their tunnel rotates: garbage, oversized frame headers, a replayed handshake
(bytes captured from the real peer with tcpdump), idle connections held open.

Expected: every hostile connection is closed by the gateway, none becomes a session, and the
good tunnel keeps rotating on equal keys with its traffic flowing. Pre-auth work is bounded per
source, so a flood of idle holds from one host must not lock a real peer out either.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess

import pytest

from gateway.demo import KMS_ADDRESS
from gateway.demo.sites import PEER_PORT
from gateway.demo.topology import WAN_IF
from tests.faults.harness import NAMES, FaultLab, flowing, ping_window
from tests.faults.hostile import Attacker, parse_pcap_stream

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def attacker(lab: FaultLab, name: str) -> Attacker:
    return Attacker(f"{lab.prefix}-kms", str(lab.plan.by_name[name].wan.ip), PEER_PORT)


async def capture_hello(lab: FaultLab) -> bytes:
    """What site 1 sends on a fresh peer connection (site 1 restarted), captured on site 0's
    WAN. Up to three restarts: on a loaded machine a capture sometimes holds only the SYN/RST
    of refused dials, the session having come up on a connection whose start it missed."""
    for attempt in range(3):
        data = await _capture_once(lab, attempt)
        if data:
            return data
    raise AssertionError("no fresh peer connection with data in three captures")


async def _capture_once(lab: FaultLab, attempt: int) -> bytes:
    pcap = lab.root / f"hello-{attempt}.pcap"
    src = str(lab.plan.by_name[NAMES[1]].wan.ip)
    dump = subprocess.Popen(["ip", "netns", "exec", lab.netns(NAMES[0]), "tcpdump", "-i", WAN_IF,
                             "-U", "-s", "0", "-w", str(pcap),
                             f"tcp port {PEER_PORT}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert dump.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(dump.stderr.readline), 20)
        assert "listening on" in line, line
        await lab.restart_daemon(NAMES[1])
        await lab.converge(1, 40, "the restart for the capture")
        await asyncio.sleep(0.5)
    finally:
        dump.terminate()
        dump.communicate(timeout=10)
    return parse_pcap_stream(pcap.read_bytes(), src, PEER_PORT)


async def test_hostile_peer_while_tunnels_rotate() -> None:
    async with FaultLab(rekey_interval=2, reject_after=6) as lab:
        await lab.start_daemons()
        await lab.converge(2, 40, "start")
        hello = await capture_hello(lab)
        assert len(hello) > 100, "no handshake bytes captured"
        closed = {n: lab.closed_count(n) for n in NAMES}
        async with ping_window(lab) as stats:
            await flowing(lab, stats)
            for n in NAMES:
                evil = attacker(lab, n)
                assert await evil.garbage(20) == 20, "a garbage connection stayed open"
                assert await evil.oversized(10) == 10, "an oversized frame was not refused"
                # The real peer's handshake, replayed from another host, 5 times: refused.
                replays = await asyncio.gather(*(evil.send_and_wait_close(hello, 20)
                                                 for _ in range(5)))
                assert all(replays), "a replayed handshake was not closed"
            # Idle holds, below the pending limit, for 12 s (past the handshake timeout).
            stop = asyncio.Event()
            evils = [attacker(lab, n) for n in NAMES]
            holds = [asyncio.create_task(e.hold(8, stop)) for e in evils]
            try:
                # Held past the 10 s handshake timeout: every hold is cut and re-opened once.
                await lab.wait_for(lambda: all(e.closed_by_peer >= 8 for e in evils), 40,
                                   "the gateways to cut idle holds at the handshake timeout")
                await lab.converge(2, 40, "hostile connections")
            finally:
                stop.set()
                await asyncio.gather(*holds)
            await flowing(lab, stats, 20, 20)
        assert {n: lab.closed_count(n) for n in NAMES} == closed, "a tunnel failed closed"
        assert stats.lost <= 5, stats
        for n in NAMES:
            assert not [e for e in lab.events(n, "session_up") if KMS_ADDRESS.ip.exploded in
                        str(e)], "a hostile connection became a session"


async def test_idle_hold_flood_does_not_lock_out_a_restarted_peer() -> None:
    """One hostile host keeps 40 idle connections to each gateway (more than the 32 pending
    connections a gateway admits), reconnecting as soon as one is cut. A peer restarting now
    must still get its session back and the tunnel must rotate again."""
    async with FaultLab(rekey_interval=2, reject_after=6) as lab:
        await lab.start_daemons()
        await lab.converge(2, 40, "start")
        stop = asyncio.Event()
        evils = [attacker(lab, n) for n in NAMES]
        holds = [asyncio.create_task(e.hold(40, stop)) for e in evils]
        try:
            await asyncio.sleep(3)
            await lab.restart_daemon(NAMES[1])
            await lab.converge(2, 30, "a restart under an idle-hold flood")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.gather(*holds)
