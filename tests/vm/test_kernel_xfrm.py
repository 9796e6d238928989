"""ESP tunnels through EspTunnel on the lab's real kernel (esp4/esp6, gcm, xfrm_interface): two
sites in namespaces joined by a veth, real packets, `ip xfrm` and tcpdump as the witnesses.

Two scenarios (QEMU TCG is 5-10x slower, so each checks a whole story):
* policy mode, IPv4: same 288-bit key per direction at both ends, 6 make-before-break rollovers
  under a 50/s ping with nothing lost, soft (time) expiry delivered, drift restored, fail-closed
  with a capture showing no inner plaintext, a strongSwan-like neighbour untouched throughout;
* route mode (XFRM interface), IPv6 outer with IPv4 and IPv6 inside: rollovers under ping, then
  the hard (packet) lifetime as the backstop: the kernel deletes the SA and traffic stops, and
  nothing goes out in clear.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import structlog

from gateway.dataplane.xfrm import (
    AEAD_ALGORITHM,
    EspTunnel,
    EspTunnelSpec,
    Lifetime,
    SaAcquire,
    SaExpired,
    XfrmMonitor,
    esp_unavailable,
    reqid_for,
)
from tests.netns_harness import NetnsLab
from tests.vm.xfrm_helpers import (
    FOREIGN_KEY,
    Events,
    Keys,
    Site,
    Wire,
    add_neighbour,
    count,
    neighbour,
    ping,
    rollover,
    start_ping,
    xfrm_states,
)

pytestmark = [pytest.mark.vm, pytest.mark.timeout(400)]

# Under QEMU TCG on a loaded host a netlink answer can take seconds; the daemon's 5 s budget is
# for real machines.
LAB_TIMEOUT = 30.0


@pytest.fixture(scope="module", autouse=True)
def crypto_warm() -> Iterator[None]:
    """The first rfc4106(gcm(aes)) SA makes the kernel build (and self-test) the cipher; do it
    once, with a generous bound, so that no scenario's deadline pays for it."""
    assert asyncio.run(esp_unavailable()) is None  # the probe agrees: this kernel has ESP
    with NetnsLab(prefix="xw") as lab:
        ns = lab.namespace("warm")
        ns.run("ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto",
               "esp", "spi", "0x100", "mode", "tunnel", "aead", AEAD_ALGORITHM, FOREIGN_KEY,
               "128", timeout=300)
    yield
SOFT_SECONDS = 5
SOFT_PACKETS, HARD_PACKETS = 150, 200


def both(lines: list[str], there: str, back: str, n: int) -> bool:
    """At least ``n`` packets each way: both ends' captures caught up (they lag independently)."""
    return count(lines, there) >= n and count(lines, back) >= n


def no_inner(lines: list[str], a: str, b: str) -> None:
    leaked = [line for line in lines if f"{a} > {b}" in line or f"{b} > {a}" in line]
    assert not leaked, f"inner packets in clear on the wire: {leaked[:3]}"


async def test_policy_mode_rollovers_expiry_fail_closed_and_ownership(
        capfd: pytest.CaptureFixture[str]) -> None:
    keys = Keys()
    with NetnsLab(prefix="xp") as lab, structlog.testing.capture_logs() as logs:
        na, nb = lab.namespace("a"), lab.namespace("b")
        veth_a, veth_b = lab.veth(na, "192.168.90.1/24", nb, "192.168.90.2/24")
        for ns, mine, theirs, gw in ((na, "10.1.0.1", "10.2.0.0/24", "192.168.90.2"),
                                     (nb, "10.2.0.1", "10.1.0.0/24", "192.168.90.1")):
            ns.run("ip", "addr", "add", f"{mine}/32", "dev", "lo")
            ns.run("ip", "route", "add", theirs, "via", gw, "src", mine)  # the default route's job
        foreign_a = add_neighbour(na, "192.168.90.1", "192.168.90.2", inbound_spi="0x91",
                                  outbound_spi="0x92")
        foreign_b = add_neighbour(nb, "192.168.90.2", "192.168.90.1", inbound_spi="0x92",
                                  outbound_spi="0x91")
        life = Lifetime(soft_seconds=SOFT_SECONDS, hard_seconds=3600)
        spec_a = EspTunnelSpec("to-b", "192.168.90.1", "192.168.90.2", ("10.1.0.0/24",),
                               ("10.2.0.0/24",), reqid_for("to-b"), lifetime=life)
        spec_b = EspTunnelSpec("to-a", "192.168.90.2", "192.168.90.1", ("10.2.0.0/24",),
                               ("10.1.0.0/24",), reqid_for("to-a"), lifetime=life)
        a = Site(na, EspTunnel(spec_a, netns=na.name, timeout=LAB_TIMEOUT))
        b = Site(nb, EspTunnel(spec_b, netns=nb.name, timeout=LAB_TIMEOUT))
        wire = Wire(na, veth_a, nb, veth_b)
        try:
            async with XfrmMonitor(na.name, reqids={spec_a.reqid}) as monitor:
                events = Events(monitor)
                assert await a.tunnel.prepare() == [] and await b.tunnel.prepare() == []
                spis = await rollover(a, b, keys, None)

                # Both ends: AES-GCM with 288-bit keys, and the same key per direction.
                sa_a, sa_b = xfrm_states(na), xfrm_states(nb)
                for spi in spis:
                    assert sa_a[spi]["key"] == sa_b[spi]["key"]
                    for view in (sa_a[spi], sa_b[spi]):
                        assert (view["alg"], view["bits"], view["icv"]) == (
                            AEAD_ALGORITHM, "288", "128")
                assert sa_a[spis[1]]["dst"] == "192.168.90.2"
                assert sa_b[spis[0]]["dst"] == "192.168.90.1"

                # Six rollovers under a 50/s ping: nothing lost, ESP on the wire, no clear text.
                mark = wire.mark()
                ping_run = na.start_ping("10.2.0.1", count=300, interval=0.02)
                history = [spis]
                for _ in range(6):
                    await asyncio.sleep(0.3)
                    spis = await rollover(a, b, keys, spis)
                    history.append(spis)
                sent, lost, summary = await ping_run.aresult()
                assert (sent, lost) == (300, 0), summary
                a_to_b, b_to_a = "192.168.90.1 > 192.168.90.2: ESP", "192.168.90.2 > 192.168.90.1: ESP"
                lines = wire.wait(mark, lambda ls: min(count(ls, a_to_b), count(ls, b_to_a)) >= 300)
                other = [line for line in lines if ": ESP(" not in line and " ARP," not in line]
                assert (count(lines, a_to_b), count(lines, b_to_a)) == (300, 300), other[:5]
                assert count(lines, f"ESP(spi=0x{spis[1]:08x}") > 0  # the newest SA carries
                no_inner(lines, "10.1.0.1", "10.2.0.1")
                assert len({s for pair in history for s in pair}) == 14
                assert set(xfrm_states(na)) == {*spis, 0x91, 0x92} == set(xfrm_states(nb))
                status = await a.tunnel.status()
                assert status.outbound_spi == spis[1]
                assert [s.spi for s in status.inbound] == [spis[0]]
                assert status.outbound[0].packets > 0 and status.inbound[0].replay_window == 128

                # The kernel's soft expiry reaches the monitor; the daemon rekeys on it.
                soft = await events.wait_for(
                    lambda e: isinstance(e, SaExpired) and not e.hard and e.spi in spis,
                    SOFT_SECONDS + 20)
                assert isinstance(soft, SaExpired) and a.tunnel.owns(soft)
                assert a.tunnel.classify(soft) in ("inbound", "outbound")
                spis = await rollover(a, b, keys, spis)

                # Drift: a policy deleted by hand comes back; a lost SA asks for a rekey.
                na.run("ip", "xfrm", "policy", "delete", "src", "10.1.0.0/24", "dst",
                       "10.2.0.0/24", "dir", "out")
                assert await a.tunnel.reconcile() == [
                    "to-b: out policy 10.1.0.0/24 -> 10.2.0.0/24 was missing; added"]
                nb.run("ip", "xfrm", "state", "delete", "src", "192.168.90.1", "dst",
                       "192.168.90.2", "proto", "esp", "spi", hex(spis[1]))
                assert any("inbound SA" in c and "rekey needed" in c
                           for c in await b.tunnel.reconcile())
                assert b.tunnel.rekey_needed
                old_a = spis[0]
                spis = await rollover(a, b, keys, None)
                assert await a.tunnel.retire_inbound(old_a)
                assert na.ping("10.2.0.1", count=3) == 0 and not b.tunnel.rekey_needed

                # Fail closed at A: policies stay, SAs go; nothing inner leaves in clear.
                since = len(events.seen)
                assert await a.tunnel.fail_closed("test: no key") == 2
                mark = wire.mark()
                assert na.ping("10.2.0.1", count=3, wait=1) == 3
                assert nb.ping("10.1.0.1", count=3, wait=1) == 3
                assert na.ping("192.168.90.2", count=2) == 0  # control: clear ICMP is seen
                lines = wire.wait(mark, lambda ls: both(ls, "192.168.90.1 > 192.168.90.2: ICMP echo",
                                                        "192.168.90.2 > 192.168.90.1: ICMP echo", 2))
                no_inner(lines, "10.1.0.1", "10.2.0.1")
                assert count(lines, "192.168.90.1 > 192.168.90.2: ICMP echo request") == 2
                assert count(lines, f"ESP(spi=0x{spis[0]:08x}") >= 3  # B sends; A drops
                acquire = await events.wait_for(lambda e: isinstance(e, SaAcquire), 20, since)
                assert isinstance(acquire, SaAcquire) and acquire.reqid == spec_a.reqid
                assert (await a.tunnel.status()).failed_closed

                spis = await rollover(a, b, keys, None)  # a new key: traffic is back
                assert na.ping("10.2.0.1", count=3) == 0
                assert neighbour(na) == foreign_a and neighbour(nb) == foreign_b
                await events.stop()

            await a.tunnel.teardown()
            await b.tunnel.teardown()
            assert set(xfrm_states(na)) == {0x91, 0x92} == set(xfrm_states(nb))
            assert str(spec_a.reqid) not in na.run("ip", "xfrm", "policy")
            assert neighbour(na) == foreign_a and neighbour(nb) == foreign_b
            # Negative control: without our policies the same ping crosses in clear.
            mark = wire.mark()
            assert na.ping("10.2.0.1", count=2) == 0
            lines = wire.wait(mark, lambda ls: both(ls, "10.1.0.1 > 10.2.0.1: ICMP echo",
                                                    "10.2.0.1 > 10.1.0.1: ICMP echo", 2))
            assert count(lines, "10.1.0.1 > 10.2.0.1: ICMP echo request") == 2
        finally:
            dropped = wire.stop()
        assert dropped == 0, "the capture missed packets: it proves nothing about them"
        a.tunnel.close()
        b.tunnel.close()
    out, err = capfd.readouterr()
    keys.assert_absent(repr(logs) + out + err)


async def test_route_mode_ipv6_outer_dual_stack_inner_and_hard_limit(
        capfd: pytest.CaptureFixture[str]) -> None:
    keys = Keys()
    with NetnsLab(prefix="xr") as lab, structlog.testing.capture_logs() as logs:
        nc, nd = lab.namespace("c"), lab.namespace("d")
        for ns in (nc, nd):
            ns.run("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        veth_c, veth_d = lab.veth(nc, "fd90::1/64", nd, "fd90::2/64")
        for ns, v4, v6 in ((nc, "10.1.0.1", "fd01::1"), (nd, "10.2.0.1", "fd02::1")):
            ns.run("ip", "addr", "add", f"{v4}/32", "dev", "lo")
            ns.run("ip", "addr", "add", f"{v6}/128", "dev", "lo")
        # Packet limits: a rollover every ~second keeps each SA far below them; a burst without
        # rekey crosses the soft one (EXPIRE, rekey now), then the hard one (the SA is deleted).
        life = Lifetime(soft_packets=SOFT_PACKETS, hard_packets=HARD_PACKETS)
        if_c, if_d = lab.ifname("xfc"), lab.ifname("xfd")
        spec_c = EspTunnelSpec("to-d", "fd90::1", "fd90::2", ("10.1.0.0/24", "fd01::/64"),
                               ("10.2.0.0/24", "fd02::/64"), reqid_for("to-d"), mode="route",
                               if_id=7, ifname=if_c, lifetime=life)
        spec_d = EspTunnelSpec("to-c", "fd90::2", "fd90::1", ("10.2.0.0/24", "fd02::/64"),
                               ("10.1.0.0/24", "fd01::/64"), reqid_for("to-c"), mode="route",
                               if_id=7, ifname=if_d, lifetime=life)
        c = Site(nc, EspTunnel(spec_c, netns=nc.name, timeout=LAB_TIMEOUT))
        d = Site(nd, EspTunnel(spec_d, netns=nd.name, timeout=LAB_TIMEOUT))
        assert await c.tunnel.prepare() == [] and await d.tunnel.prepare() == []
        assert "xfrm if_id 0x7" in nc.run("ip", "-d", "link", "show", if_c)
        assert f"10.2.0.0/24 dev {if_c}" in nc.run("ip", "route")
        assert f"fd02::/64 dev {if_c}" in nc.run("ip", "-6", "route")
        async with XfrmMonitor(nc.name, reqids={spec_c.reqid}) as monitor:
            events = Events(monitor)
            spis = await rollover(c, d, keys, None)
            assert xfrm_states(nc)[spis[1]]["dst"] == "fd90::2"
            wire = Wire(nc, veth_c, nd, veth_d)
            try:
                mark = wire.mark()
                ping6 = start_ping(nc, "fd01::1", "fd02::1", count=120)
                for _ in range(2):
                    await asyncio.sleep(0.3)
                    spis = await rollover(c, d, keys, spis)
                sent, lost, summary = await ping6.aresult()
                assert (sent, lost) == (120, 0), summary
                assert ping(nc, "10.1.0.1", "10.2.0.1") == 0
                lines = wire.wait(mark, lambda ls: both(ls, "fd90::1 > fd90::2: ESP",
                                                        "fd90::2 > fd90::1: ESP", 123))
            finally:
                dropped = wire.stop()
            assert dropped == 0, "the capture missed packets: it proves nothing about them"
            assert count(lines, "fd90::1 > fd90::2: ESP(spi=") >= 123
            no_inner(lines, "fd01::1", "fd02::1")
            no_inner(lines, "10.1.0.1", "10.2.0.1")
            status = await c.tunnel.status()
            assert status.outbound[0].packets >= 3 and status.outbound[0].lifetime == life

            # Nobody rekeys: the soft limit warns, the hard limit deletes the SAs, traffic
            # stops, and nothing goes out in clear.
            burst = start_ping(nc, "fd01::1", "fd02::1", count=HARD_PACKETS + 20,
                               interval=0.005)
            sent, lost, _ = await burst.aresult()
            assert lost >= 20
            soft = await events.wait_for(
                lambda e: isinstance(e, SaExpired) and not e.hard and e.spi == spis[1], 20)
            hard = await events.wait_for(
                lambda e: isinstance(e, SaExpired) and e.hard and e.spi == spis[1], 20)
            assert isinstance(soft, SaExpired) and isinstance(hard, SaExpired)
            assert c.tunnel.classify(hard) == "outbound" and soft.packets < hard.packets
            assert spis[1] not in xfrm_states(nc)
            wire = Wire(nc, veth_c, nd, veth_d)
            try:
                mark = wire.mark()
                assert ping(nc, "10.1.0.1", "10.2.0.1", count=2) == 2
                assert ping(nc, "fd01::1", "fd02::1", count=2) == 2
                assert ping(nc, "fd90::1", "fd90::2", count=2) == 0  # control: clear is seen
                lines = wire.wait(mark, lambda ls: both(ls, "fd90::1 > fd90::2: ICMP6, echo",
                                                        "fd90::2 > fd90::1: ICMP6, echo", 2))
            finally:
                dropped = wire.stop()
            assert dropped == 0, "the capture missed packets: it proves nothing about them"
            assert count(lines, "fd90::1 > fd90::2: ICMP6, echo request") == 2
            no_inner(lines, "10.1.0.1", "10.2.0.1")
            no_inner(lines, "fd01::1", "fd02::1")
            assert any("outbound SA" in line and "gone" in line
                       for line in await c.tunnel.reconcile())
            assert c.tunnel.rekey_needed
            await events.stop()

        await c.tunnel.teardown()
        await d.tunnel.teardown()
        assert if_c not in nc.run("ip", "link") and not xfrm_states(nc)
        assert nc.run("ip", "xfrm", "policy").strip() == ""
        c.tunnel.close()
        d.tunnel.close()
    out, err = capfd.readouterr()
    keys.assert_absent(repr(logs) + out + err)
