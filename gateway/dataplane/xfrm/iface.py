"""Route-based mode: the XFRM interface (``ip link add NAME type xfrm if_id N``) and the routes
that send the remote subnets into it, over rtnetlink (pyroute2 AsyncIPRoute).

An interface is ours when its kind is ``xfrm`` and its if_id is the tunnel's; a link of that
name that is anything else is never touched (XfrmOwnershipConflict).
"""

from __future__ import annotations

import errno as errno_mod
from ipaddress import ip_network
from typing import Any

from gateway.dataplane.errors import BackendCallFailed, DataplaneTimeout
from gateway.dataplane.links import Links, netlink_call
from gateway.dataplane.xfrm.errors import (
    XfrmKernelError,
    XfrmOwnershipConflict,
    XfrmTimeout,
    XfrmUnavailable,
)
from gateway.dataplane.xfrm.model import Network

__all__ = ["XfrmInterface"]

_MAIN_TABLE = 254
_IFF_UP = 1


class XfrmInterface:
    """One XFRM interface in ``netns`` (a name under /var/run/netns, or None)."""

    def __init__(self, name: str, if_id: int, netns: str | None = None) -> None:
        self.name = name
        self.if_id = if_id
        self.netns = netns
        self._links = Links(netns)

    async def _call(self, what: str, call: Any) -> Any:
        try:
            return await netlink_call(f"{self.name}: {what}", call)
        except DataplaneTimeout as exc:
            raise XfrmTimeout(str(exc)) from None
        except BackendCallFailed as exc:
            raise XfrmKernelError(str(exc), operation=what, errno=exc.errno) from None

    async def _find(self, ipr: Any) -> tuple[int, str | None, int | None] | None:
        """(index, kind, if_id) of the link named like ours, or None."""
        found = await self._call("look up", ipr.link_lookup(ifname=self.name))
        if not found:
            return None
        (msg,) = await self._call("read", ipr.link("get", index=found[0]))
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        if_id = data.get_attr("IFLA_XFRM_IF_ID") if kind == "xfrm" and data is not None else None
        return int(found[0]), kind, if_id

    def _check_ours(self, kind: str | None, if_id: int | None) -> None:
        if kind != "xfrm" or if_id != self.if_id:
            what = f"an xfrm interface with if_id {if_id}" if kind == "xfrm" else f"a {kind} link"
            raise XfrmOwnershipConflict(
                f"{self.name}: {what} of that name exists and is not this tunnel's (if_id "
                f"{self.if_id}); rename the tunnel's interface or remove the other link")

    async def ensure(self, routes: tuple[Network, ...]) -> tuple[bool, list[str]]:
        """Create or adopt the interface, set it up, add missing routes. Returns (created,
        corrections); corrections are drift found on an existing interface."""
        corrections: list[str] = []
        async with self._links.ipr() as ipr:
            found = await self._find(ipr)
            created = found is None
            if found is None:
                try:
                    await self._call(f"create (xfrm, if_id {self.if_id})", ipr.link(
                        "add", ifname=self.name, kind="xfrm", xfrm_if_id=self.if_id))
                except XfrmKernelError as exc:
                    if exc.errno in (errno_mod.EOPNOTSUPP, errno_mod.EPROTONOSUPPORT):
                        raise XfrmUnavailable(
                            f"{self.name}: this kernel cannot create xfrm interfaces; load "
                            "xfrm_interface (`modprobe xfrm_interface`) or use mode 'policy'",
                            operation="create xfrm interface", errno=exc.errno) from None
                    raise
                found = await self._find(ipr)
                if found is None:
                    raise XfrmKernelError(f"{self.name}: vanished right after creation",
                                          operation="create xfrm interface", errno=None)
            index, kind, if_id = found
            self._check_ours(kind, if_id)
            (msg,) = await self._call("read flags", ipr.link("get", index=index))
            if not msg["flags"] & _IFF_UP:
                await self._call("set up", ipr.link("set", index=index, state="up"))
                corrections.append(f"{self.name}: interface was down; set up")
            corrections += await self._sync_routes(ipr, index, routes)
        return created, ([] if created else corrections)

    async def _sync_routes(self, ipr: Any, index: int, routes: tuple[Network, ...]) -> list[str]:
        have: set[Network] = set()
        for family in sorted({n.version for n in routes}):
            dump = await self._call("dump routes", ipr.route(
                "dump", table=_MAIN_TABLE, family=2 if family == 4 else 10))
            async for msg in dump:
                dst = msg.get_attr("RTA_DST")
                if msg.get_attr("RTA_OIF") == index and dst is not None:
                    have.add(ip_network(f"{dst}/{msg['dst_len']}"))
        out = []
        for net in routes:
            if net not in have:
                await self._call(f"add route {net}", ipr.route("replace", dst=str(net),
                                                                 oif=index))
                out.append(f"{self.name}: route {net} was missing; added")
        return out

    async def remove(self) -> bool:
        """Delete the interface (and with it its routes) if it is ours; False if absent."""
        async with self._links.ipr() as ipr:
            found = await self._find(ipr)
            if found is None:
                return False
            index, kind, if_id = found
            self._check_ours(kind, if_id)
            await self._call("delete", ipr.link("del", index=index))
        return True

    async def index(self) -> int | None:
        async with self._links.ipr() as ipr:
            found = await self._find(ipr)
        return None if found is None else found[0]
