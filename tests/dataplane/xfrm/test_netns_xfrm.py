"""XFRM on the host kernel, in network namespaces: policies, larval SAs (ALLOCSPI), scoped flush,
EspTunnel's policy lifecycle, ACQUIRE notifications, and the kernel's error answers. The host
kernel has XFRM netlink but no ESP, so full SAs are exercised in the kernel lab (tests/vm/)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from ipaddress import ip_address, ip_network

import pytest
import structlog

from gateway.dataplane.xfrm import (
    Direction,
    EspTunnel,
    EspTunnelSpec,
    Mark,
    SaAcquire,
    XfrmClient,
    XfrmError,
    XfrmExists,
    XfrmMonitor,
    XfrmOwnershipConflict,
    XfrmSpecError,
    XfrmUnavailable,
    esp_unavailable,
    reqid_for,
)
from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.codec import sa_request
from gateway.dataplane.xfrm.model import PolicyParams, SaParams, Selector, Template
from gateway.keymaterial import Secret
from tests.netns_harness import Namespace, NetnsLab

pytestmark = pytest.mark.netns

A4, B4 = ip_address("192.168.71.1"), ip_address("192.168.71.2")
R = reqid_for("host-test")
FOREIGN = ("src", "10.91.0.0/24", "dst", "10.92.0.0/24", "dir", "out", "tmpl", "src",
           "192.168.71.1", "dst", "192.168.71.2", "proto", "esp", "reqid", "1", "mode", "tunnel")


def sel(src: str, dst: str) -> Selector:
    return Selector(ip_network(src), ip_network(dst))


def foreign_objects(ns: Namespace) -> str:
    """What a strongSwan-like neighbour owns (reqid 1), as `ip xfrm` prints it."""
    return ns.run("ip", "xfrm", "policy", "list", "src", "10.91.0.0/24") + ns.run(
        "ip", "xfrm", "state", "list", "reqid", "1")


def add_foreign(ns: Namespace) -> str:
    # Larval SAs live net.core.xfrm_acq_expires seconds (30 by default); the neighbour's must
    # outlive the test on a slow machine.
    ns.run("sysctl", "-qw", "net.core.xfrm_acq_expires=3600")
    ns.run("ip", "xfrm", "policy", "add", *FOREIGN)
    ns.run("ip", "xfrm", "state", "allocspi", "src", "192.168.71.2", "dst", "192.168.71.1",
           "proto", "esp", "reqid", "1", "mode", "tunnel")
    before = foreign_objects(ns)
    assert "reqid 1 " in before and "spi 0x" in before
    return before


async def test_client_policy_requests_and_typed_errors(lab: NetnsLab) -> None:
    ns = lab.namespace("pol")
    out = PolicyParams(sel("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT, (Template(A4, B4, R),))
    v6 = PolicyParams(Selector.any(c.AF_INET6), Direction.FWD,
                      (Template(ip_address("fd90::2"), ip_address("fd90::1"), R),),
                      mark=Mark(0x10, 0xFF), if_id=7)
    async with XfrmClient(ns.name) as x:
        await x.add_policy(out)
        await x.add_policy(v6)
        with pytest.raises(XfrmExists, match=r"add out policy 10\.1\.0\.0/24 -> 10\.2\.0\.0/24"):
            await x.add_policy(out)
        got = await x.get_policy(out.selector, Direction.OUT)
        assert got is not None and got.params() == out and got.index > 0
        await x.update_policy(PolicyParams(out.selector, Direction.OUT, out.templates, 7))
        text = ns.run("ip", "xfrm", "policy")
        assert "dir out priority 7" in text and "if_id 0x7" in text and "mark 0x10/0xff" in text
        got6 = await x.get_policy(v6.selector, Direction.FWD, mark=v6.mark, if_id=7)
        assert got6 is not None and got6.params() == v6
        assert await x.get_policy(v6.selector, Direction.FWD) is None  # wrong mark/if_id
        assert len(await x.policies()) == 2
        assert await x.delete_policy(v6.selector, Direction.FWD, mark=v6.mark, if_id=7)
        assert not await x.delete_policy(v6.selector, Direction.FWD, mark=v6.mark, if_id=7)
        assert await x.get_sa(A4, 0x1234) is None
        assert not await x.delete_sa(A4, 0x1234)


async def test_allocspi_and_flush_take_only_our_objects(lab: NetnsLab) -> None:
    ns = lab.namespace("flush")
    before = add_foreign(ns)
    async with XfrmClient(ns.name) as x:
        spi = await x.allocate_spi(B4, A4, R)
        assert c.SPI_MIN <= spi <= c.SPI_MAX
        (larval,) = [sa for sa in await x.sas() if sa.reqid == R]
        assert larval.larval and larval.spi == spi and (larval.src, larval.dst) == (B4, A4)
        assert larval.lifetime.hard_seconds == 3600  # the namespace's xfrm_acq_expires
        assert f"spi 0x{spi:08x}" in ns.run("ip", "xfrm", "state")
        await x.add_policy(PolicyParams(sel("10.1.0.0/24", "10.2.0.0/24"), Direction.OUT,
                                        (Template(A4, B4, R),)))
        assert await x.flush_owned({R}) == (1, 1)
        assert await x.flush_owned({R}) == (0, 0)
    assert foreign_objects(ns) == before
    assert str(R) not in ns.run("ip", "xfrm", "state") + ns.run("ip", "xfrm", "policy")


async def test_refused_sa_is_a_typed_error_and_the_key_never_comes_back(
        lab: NetnsLab, capfd: pytest.CaptureFixture[str]) -> None:
    """An algorithm no kernel knows makes every kernel refuse the NEWSA (ENOSYS)."""
    ns = lab.namespace("refuse")
    key = Secret.random(36)
    bogus = SaParams(A4, B4, 0x4242, R, key, algorithm="qkd-no-such-aead")
    with structlog.testing.capture_logs() as logs:
        async with XfrmClient(ns.name) as x:
            with pytest.raises(XfrmUnavailable) as info:
                await x.add_sa(bogus)
    assert info.value.errno == 38 and "add SA 0x00004242 192.168.71.1 -> 192.168.71.2" in str(
        info.value)
    out, err = capfd.readouterr()
    text = str(info.value) + repr(info.value) + repr(logs) + out + err
    assert key.reveal().hex() not in text

    # Why the socket sets NETLINK_CAP_ACK: without it the kernel's error answer echoes the whole
    # request, key included (negative control); with it only the header comes back.
    def answer(cap_ack: bool) -> bytes:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, c.NETLINK_XFRM) as s:
            s.setsockopt(c.SOL_NETLINK, c.NETLINK_CAP_ACK, int(cap_ack))
            s.bind((0, 0))
            msg = sa_request(bogus)
            msg["header"].update(type=c.XFRM_MSG_NEWSA, flags=c.NLM_F_REQUEST | c.NLM_F_ACK,
                                 sequence_number=1, pid=0)
            msg.encode()
            s.send(bytes(msg.data))
            return s.recv(65536)

    assert key.reveal() in ns.call(lambda: answer(False))
    assert key.reveal() not in ns.call(lambda: answer(True))


async def test_missing_namespace_is_reported() -> None:
    with pytest.raises(XfrmError, match="does not exist"):
        await XfrmClient(f"qkd-missing-{os.getpid()}").open()


def _spec(**kw: object) -> EspTunnelSpec:
    return EspTunnelSpec("host-test", str(A4), str(B4), ("10.1.0.0/24", "fd01::/64"),
                         ("10.2.0.0/24", "fd02::/64"), R, **kw)  # type: ignore[arg-type]


async def test_tunnel_lifecycle_on_policies_leaves_the_neighbour_alone(lab: NetnsLab) -> None:
    ns = lab.namespace("life")
    before = add_foreign(ns)
    tunnel = EspTunnel(_spec(), netns=ns.name)
    with structlog.testing.capture_logs() as logs:
        assert await tunnel.prepare() == []
        assert await tunnel.prepare() == []  # idempotent
        assert ns.run("ip", "xfrm", "policy").count(f"reqid {R} ") == 6
        spi = await tunnel.allocate_spi()
        with pytest.raises(XfrmSpecError, match="36 bytes"):
            await tunnel.install_inbound(spi, Secret.random(32))
        with pytest.raises(XfrmSpecError, match="SPI 7 is outside"):
            await tunnel.activate_outbound(7, Secret.random(36))
        status = await tunnel.status()
        assert status.policies == 6 and [s.spi for s in status.inbound] == [spi]
        assert status.inbound[0].larval and status.outbound_spi is None

        ns.run("ip", "xfrm", "policy", "delete", "src", "10.1.0.0/24", "dst", "10.2.0.0/24",
               "dir", "out")
        ns.run("ip", "xfrm", "policy", "update", "src", "fd02::/64", "dst", "fd01::/64", "dir",
               "fwd", "priority", "3", "tmpl", "src", str(B4), "dst", str(A4), "proto", "esp",
               "reqid", str(R), "mode", "tunnel")
        corrections = await tunnel.reconcile()
        assert "host-test: out policy 10.1.0.0/24 -> 10.2.0.0/24 was missing; added" in corrections
        assert "host-test: fwd policy fd02::/64 -> fd01::/64 differed; replaced" in corrections
        assert "priority 3" not in ns.run("ip", "xfrm", "policy")
        assert await tunnel.reconcile() == []

        assert await tunnel.fail_closed("test") == 1  # the larval SA
        assert str(R) not in ns.run("ip", "xfrm", "state")
        assert ns.run("ip", "xfrm", "policy").count(f"reqid {R} ") == 6  # policies stay
        assert foreign_objects(ns) == before

        await tunnel.teardown()
        tunnel.close()
    assert str(R) not in ns.run("ip", "xfrm", "policy")
    assert foreign_objects(ns) == before
    events = [e["event"] for e in logs]
    assert events.count("xfrm_drift_corrected") == 2 and "xfrm_failed_closed" in events
    assert "xfrm_tunnel_removed" in events


async def test_a_foreign_policy_in_our_slot_is_refused_before_any_change(lab: NetnsLab) -> None:
    ns = lab.namespace("slot")
    ns.run("ip", "xfrm", "policy", "add", "src", "fd01::/64", "dst", "fd02::/64", "dir", "out",
           "tmpl", "src", str(A4), "dst", str(B4), "proto", "esp", "reqid", "1", "mode", "tunnel")
    before = ns.run("ip", "xfrm", "policy")
    with pytest.raises(XfrmOwnershipConflict, match="held by reqid 1"):
        await EspTunnel(_spec(), netns=ns.name).prepare()
    assert ns.run("ip", "xfrm", "policy") == before


async def test_monitor_reports_acquires_of_our_policies_only(lab: NetnsLab) -> None:
    na, nb = lab.namespace("ma"), lab.namespace("mb")
    lab.veth(na, f"{A4}/24", nb, f"{B4}/24")
    na.run("ip", "addr", "add", "10.1.0.1/32", "dev", "lo")
    na.run("ip", "addr", "add", "10.91.0.1/32", "dev", "lo")
    for net in ("10.2.0.0/24", "10.92.0.0/24"):
        na.run("ip", "route", "add", net, "via", str(B4))
    na.run("ip", "xfrm", "policy", "add", *FOREIGN)
    tunnel = EspTunnel(_spec(), netns=na.name)
    await tunnel.prepare()
    async with XfrmMonitor(na.name, reqids={R}) as ours, XfrmMonitor(na.name) as every:
        with pytest.raises(TimeoutError):
            await ours.next(0.2)
        # Policies without SAs: the kernel drops the packets and asks for SAs (ACQUIRE).
        for src, dst in (("10.1.0.1", "10.2.0.7"), ("10.91.0.1", "10.92.0.7")):
            out = await na.arun("ping", "-c", "1", "-W", "1", "-I", src, dst, check=False)
            assert " 0 received" in out
        event = await ours.next(10)
        assert isinstance(event, SaAcquire) and tunnel.owns(event)
        assert (event.src, event.dst, event.reqid) == (A4, B4, R)
        seen = set()
        while len(seen) < 2:
            seen.add((await every.next(10)).reqid)  # type: ignore[union-attr]
        assert seen == {1, R}
        await asyncio.sleep(0.3)
        with pytest.raises(TimeoutError):  # the foreign ACQUIRE never reached `ours`
            while True:
                extra = await ours.next(0.3)
                assert extra.reqid == R  # type: ignore[union-attr]
    await tunnel.teardown()
    tunnel.close()


async def test_closing_a_monitor_ends_a_waiting_reader(lab: NetnsLab) -> None:
    """The daemon may close a monitor while a task waits on it: the task gets an XfrmError at
    once (not a hang, not a read on a file descriptor number that was reused)."""
    ns = lab.namespace("close")
    monitor = await XfrmMonitor(ns.name).open()
    waiting = asyncio.create_task(monitor.next(30))
    await asyncio.sleep(0.1)
    monitor.close()
    with pytest.raises(XfrmError, match="closed"):
        await asyncio.wait_for(waiting, 5)
    async with XfrmClient(ns.name) as x:  # the loop is still healthy
        assert await x.policies() == []


async def test_the_esp_probe_agrees_with_a_real_install(lab: NetnsLab) -> None:
    """esp_unavailable() answers from a private namespace what a real NEWSA would meet."""
    ns = lab.namespace("probe")
    reason = await esp_unavailable()
    async with XfrmClient(ns.name) as x:
        try:
            await x.add_sa(SaParams(A4, B4, 0x4243, R, Secret.random(36)))
        except XfrmUnavailable as exc:
            assert reason is not None and exc.errno is not None
            assert errno.errorcode[exc.errno] in reason and "modprobe esp4" in reason
        else:
            assert reason is None
