"""The pinger counts exactly: nothing lost on a good path, the outage's pings when cut."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from gateway.demo import Pinger, Topology
from gateway.demo.pinger import _checksum, _echo_request, _parse_reply


@pytest.mark.unit
def test_echo_request_and_reply_parsing() -> None:
    request = _echo_request(0x1234, 7)
    assert _checksum(request) == 0  # a correct checksum sums to zero
    assert len(request) == 64  # 8 header + 56 payload, as ping(8)
    ip_header = bytes([0x45]) + bytes(19)
    reply = bytes([0]) + request[1:]  # type 0 = echo reply
    assert _parse_reply(ip_header + reply, 0x1234) == 7
    assert _parse_reply(ip_header + reply, 0x4321) is None  # another pinger's reply
    assert _parse_reply(ip_header + request, 0x1234) is None  # a request is not a reply
    assert _parse_reply(ip_header[:10], 0x1234) is None
    unreachable = struct.pack("!BBHHH", 3, 1, 0, 0x1234, 7)
    assert _parse_reply(ip_header + unreachable, 0x1234) is None


@pytest.mark.netns
async def test_no_loss_on_a_good_path(topo: Topology) -> None:
    pinger = Pinger(topo.sites["bucharest"].netns, "198.18.0.11")
    task = asyncio.create_task(pinger.run())
    await asyncio.sleep(2.0)
    pinger.stop()
    stats = await task
    # 20/s on a fixed schedule: 2 s is 40 or 41 requests, every one answered.
    assert 40 <= stats.sent <= 41
    assert stats.received == stats.sent and stats.lost == 0 and stats.late == 0
    assert 0 < stats.rtt_min_ms <= stats.rtt_avg_ms <= stats.rtt_max_ms < 50


@pytest.mark.netns
async def test_one_second_outage_loses_twenty(topo: Topology) -> None:
    pinger = Pinger(topo.sites["bucharest"].netns, "198.18.0.11")
    task = asyncio.create_task(pinger.run())
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    await asyncio.to_thread(topo.set_wan_link, "cluj-napoca", False)
    t1 = time.monotonic()
    await asyncio.sleep(1.0)
    t2 = time.monotonic()
    await asyncio.to_thread(topo.set_wan_link, "cluj-napoca", True)
    t3 = time.monotonic()
    await asyncio.sleep(1.5)
    pinger.stop()
    stats = await task
    # Down for 1 s plus the time of the two `ip` commands (~5 ms, more on a loaded machine):
    # one request every 50 ms in that window, one more either way if the edges fall badly.
    shortest, longest = (t2 - t1) / 0.05, (t3 - t0) / 0.05
    assert int(shortest) - 1 <= stats.lost <= int(longest) + 2, (stats, shortest, longest)
    assert stats.lost >= 19
    assert stats.sent == stats.received + stats.lost  # every request settled, none in flight
    assert stats.in_flight == 0 and stats.late == 0


@pytest.mark.netns
async def test_unreachable_target_counts_every_request_lost(topo: Topology) -> None:
    # 198.18.0.99 is in the WAN subnet but nobody has it: ARP fails, nothing answers.
    stats = await Pinger(topo.sites["bucharest"].netns, "198.18.0.99", interval=0.02,
                         timeout=0.3).run(count=10)
    assert (stats.sent, stats.received, stats.lost) == (10, 0, 10)
    assert stats.loss_percent == 100.0


@pytest.mark.unit
def test_rejects_ipv6_target() -> None:
    with pytest.raises(ValueError, match="ICMPv4"):
        Pinger("anything", "2001:db8::1")


@pytest.mark.netns
async def test_a_stalled_event_loop_does_not_turn_answers_into_losses(topo: Topology) -> None:
    """Replies carry the kernel's arrival time: a process that runs 1.5 s late (a loaded CI
    machine) still counts them as answered in time."""
    pinger = Pinger(topo.sites["bucharest"].netns, "198.18.0.11")
    task = asyncio.create_task(pinger.run())
    await asyncio.sleep(0.5)
    time.sleep(1.5)  # the stall under test: nothing else runs meanwhile
    await asyncio.sleep(0.5)
    pinger.stop()
    stats = await task
    # Requests are sent on schedule only while the loop runs: ~20 before, a burst after.
    assert stats.sent >= 20
    assert stats.received == stats.sent and stats.lost == 0 and stats.late == 0, stats
    assert stats.rtt_max_ms < 50  # kernel times, not the 1.5 s the process was away
