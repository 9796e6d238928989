"""Links, addresses and routes over rtnetlink (pyroute2 AsyncIPRoute), shared by both backends.

Every call runs under :data:`NETLINK_TIMEOUT`; pyroute2's NetlinkError becomes BackendCallFailed
with the kernel's errno and a hint. ``netns`` is a name under /var/run/netns (None: our own).
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import ipaddress
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from gateway.dataplane.errors import BackendCallFailed, DataplaneTimeout
from gateway.dataplane.reconcile import plan_addresses
from gateway.dataplane.types import WgInterfaceSpec

__all__ = ["NETLINK_TIMEOUT", "Links", "netlink_call"]

# rtnetlink answers in microseconds; seconds mean a wedged kernel or a forked netns helper that
# never came back, and the daemon must report that rather than hang.
NETLINK_TIMEOUT = 5.0
_MAIN_TABLE = 254
_DEFAULT_ROUTES = {"0.0.0.0/0", "::/0"}

T = TypeVar("T")


async def netlink_call(what: str, call: Awaitable[T], timeout: float = NETLINK_TIMEOUT) -> T:
    """Await one netlink request with a deadline and typed errors."""
    try:
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError:
        raise DataplaneTimeout(f"netlink: {what} took longer than {timeout} s") from None
    except NetlinkError as exc:
        code = int(exc.code)
        hint = ""
        if code == errno_mod.EOPNOTSUPP:
            hint = " (this kernel lacks the feature: for WireGuard use the userspace backend)"
        elif code == errno_mod.EPERM:
            hint = " (needs CAP_NET_ADMIN: run as root or grant the capability)"
        raise BackendCallFailed(
            f"netlink: {what} failed: {errno_mod.errorcode.get(code, code)} "
            f"{exc.args[1] if len(exc.args) > 1 else ''}{hint}".rstrip(),
            errno=code,
        ) from None


class Links:
    """rtnetlink helpers bound to one network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    @asynccontextmanager
    async def ipr(self) -> AsyncIterator[Any]:
        """An rtnetlink socket in this namespace, closed on exit (xfrm interfaces use it too)."""
        ipr = AsyncIPRoute(netns=self.netns) if self.netns else AsyncIPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    async def index(self, name: str) -> int | None:
        async with self.ipr() as ipr:
            found = await netlink_call(f"lookup {name}", ipr.link_lookup(ifname=name))
        return int(found[0]) if found else None

    async def kind(self, name: str) -> str | None:
        """The link kind ("wireguard", "tun", ...) or None if the link does not exist."""
        async with self.ipr() as ipr:
            found = await netlink_call(f"lookup {name}", ipr.link_lookup(ifname=name))
            if not found:
                return None
            (msg,) = await netlink_call(f"get {name}", ipr.link("get", index=found[0]))
        info = msg.get_attr("IFLA_LINKINFO")
        return str(info.get_attr("IFLA_INFO_KIND")) if info is not None else None

    async def create(self, name: str, kind: str) -> None:
        async with self.ipr() as ipr:
            await netlink_call(
                f"create {kind} link {name}", ipr.link("add", ifname=name, kind=kind)
            )

    async def delete(self, name: str) -> bool:
        """Delete the link; False if it did not exist."""
        async with self.ipr() as ipr:
            found = await netlink_call(f"lookup {name}", ipr.link_lookup(ifname=name))
            if not found:
                return False
            await netlink_call(f"delete {name}", ipr.link("del", index=found[0]))
        return True

    async def set_state(self, name: str, state: str) -> bool:
        """Set the link "up" or "down" (down: no traffic in or out); False if it is missing."""
        async with self.ipr() as ipr:
            found = await netlink_call(f"lookup {name}", ipr.link_lookup(ifname=name))
            if not found:
                return False
            await netlink_call(f"set {name} {state}", ipr.link("set", index=found[0], state=state))
        return True

    async def addresses(self, index: int) -> set[str]:
        """Global addresses as ``ip/prefix``; link-local ones are the kernel's, not ours."""
        async with self.ipr() as ipr:
            dump = await netlink_call("dump addresses", ipr.addr("dump", index=index))
            out = set()
            async for msg in dump:
                if msg["index"] != index:
                    continue
                iface = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
                if not iface.ip.is_link_local:
                    out.add(str(iface))
        return out

    async def sync_link(self, spec: WgInterfaceSpec, *, created: bool) -> list[str]:
        """Addresses, routes for allowed IPs, link up. Returns corrections (none when created)."""
        name = spec.name
        index = await self.index(name)
        if index is None:
            raise BackendCallFailed(f"{name}: link vanished while being configured")
        add, drop, corrections = plan_addresses(name, spec.addresses, await self.addresses(index))
        async with self.ipr() as ipr:
            for op, texts in (("del", drop), ("add", add)):
                for text in texts:
                    ip = ipaddress.ip_interface(text)
                    prefix = ip.network.prefixlen
                    await netlink_call(
                        f"{name}: {op} address {text}",
                        ipr.addr(op, index=index, address=str(ip.ip), prefixlen=prefix),
                    )
            # Up before routes: the kernel refuses a route via a down link (ENETDOWN). A spec
            # that wants the link down (a tunnel failing closed) keeps it down, without routes.
            (msg,) = await netlink_call(f"get {name}", ipr.link("get", index=index))
            up = bool(msg["flags"] & 1)  # IFF_UP
            if spec.down:
                if up:
                    await netlink_call(f"{name}: set down",
                                       ipr.link("set", index=index, state="down"))
                return []
            if not up:
                await netlink_call(f"{name}: set up", ipr.link("set", index=index, state="up"))
                corrections.append(f"{name}: link was down; set up")
            corrections += await self._sync_routes(ipr, spec, index)
        return [] if created else corrections

    async def _sync_routes(self, ipr: Any, spec: WgInterfaceSpec, index: int) -> list[str]:
        # Like wg-quick: a route per allowed IP, except those the interface's own prefixes already
        # cover and default routes (hijacking the default route is the operator's decision).
        own = [ipaddress.ip_interface(a).network for a in spec.addresses]
        wanted = set()
        for peer in spec.peers:
            for cidr in peer.allowed_ips:
                net = ipaddress.ip_network(cidr)
                if cidr in _DEFAULT_ROUTES:
                    continue
                if any(net.version == o.version and net.subnet_of(o) for o in own):  # type: ignore[arg-type]
                    continue
                wanted.add(str(net))
        have = set()
        dump = await netlink_call("dump routes", ipr.route("dump", table=_MAIN_TABLE))
        async for msg in dump:
            if msg.get_attr("RTA_OIF") == index and msg.get_attr("RTA_DST") is not None:
                have.add(str(ipaddress.ip_network(f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}")))
        corrections = []
        for cidr in sorted(wanted - have):
            await netlink_call(
                f"{spec.name}: add route {cidr}", ipr.route("replace", dst=cidr, oif=index)
            )
            corrections.append(f"{spec.name}: route {cidr} was missing; added")
        return corrections
