"""The ESP keeper on the host kernel's real XFRM netlink (no ESP there: SAs cannot be installed,
but policies and ALLOCSPI work), in a network namespace next to a strongSwan-like neighbour:
policies from start, a closed start without state, the kernel's SPI, the refused inbound SA as
a typed error for InstallFailed, policy drift repaired, retire, failsafe and teardown touching
only our reqid. The full ESP story is the kernel lab's (tests/vm/test_daemon_xfrm.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.esp_keeper import EspKeeper
from gateway.daemon.state import StateStore
from gateway.dataplane.xfrm import (
    EspTunnel,
    EspTunnelSpec,
    Lifetime,
    XfrmUnavailable,
    reqid_for,
)
from gateway.keymaterial import Secret
from gateway.protocol import TunnelKeys
from tests.netns_harness import Namespace, NetnsLab

pytestmark = pytest.mark.netns

R = reqid_for("esp-host")
FOREIGN = ("src", "10.91.0.0/24", "dst", "10.92.0.0/24", "dir", "out", "tmpl", "src",
           "192.168.72.1", "dst", "192.168.72.2", "proto", "esp", "reqid", "1", "mode", "tunnel")


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with NetnsLab(prefix="qe") as lab:
        yield lab.namespace("h")


def spec() -> EspTunnelSpec:
    return EspTunnelSpec("esp-host", "192.168.72.1", "192.168.72.2", ("10.1.0.0/24",),
                         ("10.2.0.0/24",), R, lifetime=Lifetime(soft_seconds=50, hard_seconds=60))


def foreign(ns: Namespace) -> str:
    return ns.run("ip", "xfrm", "policy", "list", "src", "10.91.0.0/24") + ns.run(
        "ip", "xfrm", "state", "list", "reqid", "1")


def ours(ns: Namespace) -> tuple[int, int]:
    """(our policies, our SAs) as `ip xfrm` lists them."""
    return (ns.run("ip", "xfrm", "policy", "list").count(f"reqid {R} "),
            ns.run("ip", "xfrm", "state", "list").count(f"reqid {R} "))


def keeper(ns: Namespace, tmp_path: Path, events: list[tuple[str, dict[str, Any]]]
           ) -> EspKeeper:
    store = StateStore(tmp_path)
    store.prepare()
    return EspKeeper("esp-host", 180, EspTunnel(spec(), netns=ns.name), store,
                     emit=lambda e, **f: events.append((e, f)), alarm=lambda *a, **f: None)


async def test_esp_keeper_on_the_host_kernel_touches_only_its_own(
        ns: Namespace, tmp_path: Path) -> None:
    ns.run("sysctl", "-qw", "net.core.xfrm_acq_expires=3600")  # larval SAs outlive the test
    ns.run("ip", "xfrm", "policy", "add", *FOREIGN)
    ns.run("ip", "xfrm", "state", "allocspi", "src", "192.168.72.2", "dst", "192.168.72.1",
           "proto", "esp", "reqid", "1", "mode", "tunnel")
    neighbour = foreign(ns)
    events: list[tuple[str, dict[str, Any]]] = []
    k = keeper(ns, tmp_path, events)
    await k.start()
    assert k.closed and ours(ns) == (3, 0)  # no state: closed, but the policies are in place
    assert events[-1][0] == "tunnel_failed_closed"

    spi = await k.allocate_spi(1)
    assert spi >= 0x100 and ours(ns) == (3, 1)  # the kernel's larval SA, our reqid
    esp_in = Secret.random(36)
    keys = TunnelKeys("qkd+pqc", ("qkd", "pqc"), ("id",), Secret.random(32), esp_in,
                      Secret.random(36), spi, 0x9001)
    with pytest.raises(XfrmUnavailable) as err:  # this kernel has no ESP: the runner's
        await k.install_inbound(1, keys)         # InstallFailed carries this message
    assert esp_in.reveal().hex() not in str(err.value)

    ns.run("ip", "xfrm", "policy", "delete", "src", "10.1.0.0/24", "dst", "10.2.0.0/24",
           "dir", "out")
    assert ours(ns)[0] == 2
    assert await k.verify()  # the reconcile pass puts our policy back
    assert ours(ns)[0] == 3
    await k.retire(1)
    assert ours(ns) == (3, 0)

    spi2 = await k.allocate_spi(2)
    assert spi2 != spi and ours(ns) == (3, 1)
    await k.expire("policy not met")  # already closed: a no-op, the larval SA stays
    assert ours(ns) == (3, 1)
    await k._fail_closed("test: close again", rewrite=True)
    assert ours(ns) == (3, 0)

    # `qkd-gateway failsafe` on a closed state does nothing; teardown removes ours only.
    again = keeper(ns, tmp_path, events)
    assert await again.failsafe(15) is None
    again.tunnel.close()
    await k.close(teardown=True)
    assert ours(ns) == (0, 0) and foreign(ns) == neighbour
