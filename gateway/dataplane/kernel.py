"""Kernel WireGuard backend: generic netlink (pyroute2 AsyncWireGuard), one peer per request,
base64 keys; the link itself, addresses and routes over rtnetlink (see links.py).

One generic netlink socket per backend, opened at its first call and kept: opening one resolves
the ``wireguard`` family (a round trip to the kernel's controller) and, in a named network
namespace, starts pyroute2's namespace helper, which cost more than the request itself on every
PSK write. pyroute2's WireGuard requests read "the next answer" from the socket, so requests take
turns (a lock); a request that fails in any way other than a kernel error code (a timeout, a
cancellation) may leave an answer unread, and the socket is then closed and a new one opened by
the next call.

The host this project is developed on has no WireGuard module, so this backend is exercised in
the kernel lab (scripts/kernel_lab.sh, tests/vm/).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno as errno_mod
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import structlog
from pyroute2 import AsyncWireGuard
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.generic.wireguard import WG_CMD_SET_DEVICE, WG_GENL_VERSION, wgmsg

from gateway.dataplane.device import adopt_or_reconcile, confirm_psk
from gateway.dataplane.errors import (
    BackendCallFailed,
    InterfaceConflict,
    InterfaceNotFound,
    SpecError,
)
from gateway.dataplane.links import Links, netlink_call
from gateway.dataplane.netlink_wg import parse_device, peer_request, recreate_peer_attrs
from gateway.dataplane.reconcile import DevicePlan, normalize_spec, require_peers
from gateway.dataplane.types import (
    KEY_LEN,
    DeviceState,
    PeerState,
    PeerStatus,
    WgInterfaceSpec,
    validate_ifname,
    validate_public_key,
)
from gateway.keymaterial import Secret

__all__ = ["KernelBackend"]

log = structlog.get_logger("gateway.dataplane")
T = TypeVar("T")


class KernelBackend:
    """WireGuardBackend over generic netlink. ``netns``: a name under /var/run/netns."""

    kind = "kernel"

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._links = Links(netns)
        self._adopted: set[str] = set()
        self._sock: Any = None  # AsyncWireGuard
        self._turn: asyncio.Lock | None = None
        # The event loop the socket and the lock serve (a backend outlives a test's loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        #: generic netlink sockets opened so far (one, unless a request broke one)
        self.sockets_opened = 0

    async def _open(self) -> Any:
        sock = AsyncWireGuard(netns=self.netns) if self.netns else AsyncWireGuard()
        # pyroute2 logs at ERROR when the family is missing; we raise a typed error instead.
        sock.module_err_level = "debug"
        try:
            await netlink_call("bind the wireguard generic netlink family", sock.setup_endpoint())
        except BaseException:
            sock.close()
            raise
        self.sockets_opened += 1
        return sock

    @asynccontextmanager
    async def _wg(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()
            self._turn, self._loop = asyncio.Lock(), loop
        assert self._turn is not None
        async with self._turn:
            if self._sock is None:
                self._sock = await self._open()
            try:
                yield self._sock
            except BaseException as exc:
                # A kernel error code means the answer was read: the socket is in step.
                # Anything else (a timeout, a cancellation) may have left one unread.
                if not isinstance(exc, BackendCallFailed | InterfaceNotFound):
                    self.close()
                raise

    def close(self) -> None:
        """Close the generic netlink socket (the next call opens a new one)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # its event loop may be closed already
                sock.close()

    async def _call(self, ifname: str, what: str, call: Awaitable[T]) -> T:
        try:
            return await netlink_call(f"{ifname}: {what}", call)
        except BackendCallFailed as exc:
            if exc.errno == errno_mod.ENODEV:
                raise InterfaceNotFound(f"{ifname}: no such WireGuard interface") from None
            raise

    async def _get(self, ifname: str, only: str | None = None) -> DeviceState:
        """The device (``only``: with that one peer, if present), from one dump."""
        async with self._wg() as wg:

            async def dump() -> list[Any]:
                return [msg async for msg in await wg.info(ifname)]

            msgs = await self._call(ifname, "read device", dump())
        try:
            return parse_device(msgs, only)
        except ValueError as exc:
            raise BackendCallFailed(f"netlink: {ifname}: read device: {exc}") from None

    async def apply(self, spec: WgInterfaceSpec) -> list[str]:
        spec = normalize_spec(spec)
        name = spec.name
        kind = await self._links.kind(name)
        if kind is not None and kind != "wireguard":
            raise InterfaceConflict(
                f"{name}: a {kind} link of that name exists (wireguard-go's TUN device?);"
                " delete it, rename the interface, or use the userspace backend"
            )
        return await adopt_or_reconcile(
            spec, exists=kind is not None, kind=self.kind, netns=self.netns, links=self._links,
            adopted=self._adopted, read=lambda: self._get(name),
            create=lambda: self._links.create(name, "wireguard"),
            write=lambda plan: self._write(name, plan))

    async def _write(self, name: str, plan: DevicePlan) -> None:
        if plan.empty:
            return
        async with self._wg() as wg:
            if plan.private_key is not None or plan.listen_port is not None:
                private_b64 = (
                    base64.b64encode(plan.private_key.reveal()).decode()
                    if plan.private_key is not None
                    else None
                )
                await self._call(
                    name,
                    "set private key / listen port",
                    wg.set(name, private_key=private_b64, listen_port=plan.listen_port),
                )
            for pub in plan.remove_peers:
                await self._call(
                    name,
                    f"remove peer {pub}",
                    wg.set(name, peer={"public_key": pub, "remove": True}),
                )
            for change in plan.peer_changes:
                await self._call(
                    name,
                    f"configure peer {change.spec.public_key}",
                    wg.set(name, peer=peer_request(change)),
                )

    async def _peer(self, ifname: str, peer_public_key: str) -> PeerState:
        pub = validate_public_key(peer_public_key)
        state = await self._get(validate_ifname(ifname), only=pub)
        require_peers(ifname, state, [pub])
        return state.peers[pub]

    async def set_psk(self, ifname: str, peer_public_key: str, psk: Secret) -> None:
        if len(psk) != KEY_LEN:
            raise SpecError(f"{ifname}: a WireGuard PSK is {KEY_LEN} bytes, got {len(psk)}")
        pub = validate_public_key(peer_public_key)
        request = {
            "public_key": pub,
            "update_only": True,
            "preshared_key": base64.b64encode(psk.reveal()).decode(),
        }
        async with self._wg() as wg:
            await self._call(ifname, f"set PSK of peer {pub}", wg.set(ifname, peer=request))
        confirm_psk(ifname, pub, (await self._peer(ifname, pub)).preshared_key, psk)

    async def get_psk(self, ifname: str, peer_public_key: str) -> Secret | None:
        return (await self._peer(ifname, peer_public_key)).preshared_key

    async def psks(self, ifname: str) -> dict[str, Secret | None]:
        state = await self._get(validate_ifname(ifname))
        return {pub: peer.preshared_key for pub, peer in state.peers.items()}

    async def force_handshake(self, ifname: str, peer_public_key: str) -> None:
        peer = await self._peer(ifname, peer_public_key)
        async with self._wg() as wg:
            # One message holding "remove peer" then "add it back": the kernel applies both under
            # the device lock, so no packet ever finds the peer missing.
            msg = wgmsg()
            msg["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
            msg["attrs"].append(["WGDEVICE_A_PEERS", recreate_peer_attrs(wg, peer)])
            msg["cmd"] = WG_CMD_SET_DEVICE
            msg["version"] = WG_GENL_VERSION

            async def send() -> None:
                async for _ in await wg.nlm_request(
                    msg, msg_type=wg.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK
                ):
                    pass

            await self._call(ifname, f"re-create peer {peer.public_key}", send())

    async def peer_status(self, ifname: str) -> list[PeerStatus]:
        state = await self._get(validate_ifname(ifname))
        return [p.status for p in state.peers.values()]

    async def set_blocked(self, ifname: str, blocked: bool) -> None:
        if await self._links.set_state(validate_ifname(ifname), "down" if blocked else "up"):
            log.warning("wg_interface_blocked" if blocked else "wg_interface_unblocked",
                        tunnel=ifname, backend=self.kind)

    async def remove(self, ifname: str) -> None:
        if ifname in self._adopted:
            raise InterfaceConflict(
                f"{ifname}: adopted interfaces belong to the tool that created them; not deleting"
            )
        if await self._links.delete(validate_ifname(ifname)):
            log.info("wg_interface_removed", tunnel=ifname, backend=self.kind)
