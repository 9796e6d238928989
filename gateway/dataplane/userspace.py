"""User-space WireGuard backend: wireguard-go (or boringtun) driven over its UAPI socket.

The interface is created by starting ``wireguard-go <ifname>`` (inside ``ip netns exec`` when the
backend is bound to a namespace); wireguard-go daemonises once its TUN device and socket exist,
and exits by itself when the link is deleted. The socket directory is shared by every namespace,
so names must be unique host-wide: a name whose socket answers but whose link is not in our
namespace is refused rather than reconfigured.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import structlog

from gateway.dataplane.device import adopt_or_reconcile, confirm_psk
from gateway.dataplane.errors import (
    BackendCallFailed,
    BackendUnavailable,
    DataplaneTimeout,
    InterfaceConflict,
    SpecError,
)
from gateway.dataplane.links import Links
from gateway.dataplane.reconcile import DevicePlan, normalize_spec, peer_not_found
from gateway.dataplane.types import (
    KEY_LEN,
    PeerState,
    PeerStatus,
    WgInterfaceSpec,
    b64_to_hex,
    validate_ifname,
    validate_public_key,
)
from gateway.dataplane.uapi import UAPI_DIR, UapiClient, plan_to_uapi, recreate_peer
from gateway.keymaterial import Secret

__all__ = ["WIREGUARD_GO_START_TIMEOUT", "UserspaceBackend"]

log = structlog.get_logger("gateway.dataplane")

# wireguard-go creates the TUN device and socket before daemonising (~10 ms); 10 s allows for a
# cold start on a loaded router and the fork of `ip netns exec`.
WIREGUARD_GO_START_TIMEOUT = 10.0
# How long remove() waits for wireguard-go to notice its link is gone and unlink its socket.
_EXIT_WAIT = 2.0


class UserspaceBackend:
    """WireGuardBackend over the UAPI socket. ``netns``: a name under /var/run/netns."""

    kind = "userspace"

    def __init__(
        self,
        netns: str | None = None,
        *,
        binary: str = "wireguard-go",
        uapi_dir: Path = UAPI_DIR,
    ) -> None:
        self.netns = netns
        self.binary = binary
        self.uapi_dir = uapi_dir
        self._links = Links(netns)
        self._adopted: set[str] = set()

    def _uapi(self, ifname: str) -> UapiClient:
        return UapiClient(validate_ifname(ifname), self.uapi_dir)

    async def apply(self, spec: WgInterfaceSpec) -> list[str]:
        spec = normalize_spec(spec)
        name, uapi = spec.name, self._uapi(spec.name)
        index = await self._links.index(name)
        alive = await uapi.alive()
        if index is None and alive:
            raise InterfaceConflict(
                f"{name}: {uapi.path} answers but no link {name} exists in this namespace"
                f" ({self.netns or 'the root namespace'}): the name is used in another network"
                " namespace; UAPI socket names are host-wide, pick a unique interface name"
            )
        if index is not None and not alive:
            raise InterfaceConflict(
                f"{name}: link exists but no wireguard-go answers on {uapi.path}: it is a kernel"
                " or other link; delete it, rename the interface, or use the kernel backend"
            )

        async def write(plan: DevicePlan) -> None:
            body = plan_to_uapi(plan)
            if body:
                await uapi.set(body)

        return await adopt_or_reconcile(
            spec, exists=index is not None, kind=self.kind, netns=self.netns, links=self._links,
            adopted=self._adopted, read=uapi.get, create=lambda: self._start(name, uapi),
            write=write)

    async def _start(self, name: str, uapi: UapiClient) -> None:
        if shutil.which(self.binary) is None:
            raise BackendUnavailable(
                f"{self.binary} not found on PATH: apt-get install wireguard-go"
            )
        if uapi.remove_stale_socket():
            log.warning("wg_stale_socket_removed", tunnel=name, path=str(uapi.path))
        cmd = [self.binary, name]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        env = dict(os.environ)
        # LOG_LEVEL would hand our stdout pipe to the daemon and block the wait below forever;
        # WG_PROCESS_FOREGROUND would keep it in the foreground as our child.
        env.pop("LOG_LEVEL", None)
        env.pop("WG_PROCESS_FOREGROUND", None)
        # wireguard-go refuses to start when a kernel module is present unless told otherwise.
        env["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"] = "1"
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            async with asyncio.timeout(WIREGUARD_GO_START_TIMEOUT):
                output, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            raise DataplaneTimeout(
                f"{name}: {self.binary} did not daemonise within {WIREGUARD_GO_START_TIMEOUT} s"
            ) from None
        if proc.returncode != 0:
            lines = [ln for ln in output.decode(errors="replace").splitlines() if ln.strip()]
            detail = lines[-1].strip() if lines else "no output"
            raise BackendCallFailed(
                f"{name}: `{' '.join(cmd)}` exited {proc.returncode}: {detail}"
                " (TUN support: /dev/net/tun must exist; the name must be unused)"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WIREGUARD_GO_START_TIMEOUT
        while not await uapi.alive():
            if loop.time() > deadline:
                raise DataplaneTimeout(f"{name}: {uapi.path} did not appear after start")
            await asyncio.sleep(0.01)

    async def _peer(self, ifname: str, peer_public_key: str) -> PeerState:
        pub = validate_public_key(peer_public_key)
        peer = await self._uapi(ifname).get_peer(pub)
        if peer is None:
            raise peer_not_found(ifname, pub)
        return peer

    async def set_psk(self, ifname: str, peer_public_key: str, psk: Secret) -> None:
        if len(psk) != KEY_LEN:
            raise SpecError(f"{ifname}: a WireGuard PSK is {KEY_LEN} bytes, got {len(psk)}")
        pub = validate_public_key(peer_public_key)
        uapi = self._uapi(ifname)
        # update_only: a PSK for a peer that is not configured must not create the peer.
        await uapi.set(
            f"public_key={b64_to_hex(pub)}\nupdate_only=true\n"
            f"preshared_key={psk.reveal().hex()}\n"
        )
        confirm_psk(ifname, pub, (await self._peer(ifname, pub)).preshared_key, psk)

    async def get_psk(self, ifname: str, peer_public_key: str) -> Secret | None:
        return (await self._peer(ifname, peer_public_key)).preshared_key

    async def psks(self, ifname: str) -> dict[str, Secret | None]:
        state = await self._uapi(ifname).get()
        return {pub: peer.preshared_key for pub, peer in state.peers.items()}

    async def force_handshake(self, ifname: str, peer_public_key: str) -> None:
        peer = await self._peer(ifname, peer_public_key)
        await self._uapi(ifname).set(recreate_peer(peer))

    async def peer_status(self, ifname: str) -> list[PeerStatus]:
        state = await self._uapi(ifname).get()
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
        uapi = self._uapi(ifname)
        if not await self._links.delete(ifname):
            # Not in our namespace: clean a dead socket, never one another namespace uses.
            if not await uapi.alive():
                uapi.remove_stale_socket()
            return
        # wireguard-go exits on its own once the link is gone; poll because there is no event.
        for _ in range(int(_EXIT_WAIT / 0.02)):
            if not await uapi.alive():
                break
            await asyncio.sleep(0.02)
        if not await uapi.alive():
            uapi.remove_stale_socket()
        log.info("wg_interface_removed", tunnel=ifname, backend=self.kind)

