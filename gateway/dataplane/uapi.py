"""Client for the cross-platform WireGuard UAPI (wireguard-go, boringtun): a Unix socket at
``/var/run/wireguard/<ifname>.sock`` speaking ``get=1`` / ``set=1`` with hex keys.

Every request is one connection under :data:`UAPI_TIMEOUT`. Requests carry key bytes, so neither
requests nor raw answers are ever logged or put into an exception.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import os
from pathlib import Path

from gateway.dataplane.errors import BackendCallFailed, DataplaneTimeout, InterfaceNotFound
from gateway.dataplane.reconcile import DevicePlan
from gateway.dataplane.types import (
    DeviceState,
    PeerState,
    PeerStatus,
    WgPeerSpec,
    b64_to_hex,
    hex_to_b64,
    normalize_cidr,
)
from gateway.keymaterial import Secret

__all__ = ["UAPI_DIR", "UAPI_TIMEOUT", "UapiClient", "parse_get", "plan_to_uapi", "recreate_peer"]

UAPI_DIR = Path("/var/run/wireguard")
# wireguard-go answers a get in well under a millisecond; 3 s covers a loaded 2-core router.
UAPI_TIMEOUT = 3.0
_ZERO_KEY = "0" * 64
_MAX_ANSWER = 1 << 22  # 4 MiB: ~10k peers
_HINTS = {
    errno_mod.EADDRINUSE: ": the listen port is used by another socket; pick another port",
    errno_mod.EINVAL: ": a key or value was malformed",
}


class UapiClient:
    """One interface's UAPI socket."""

    def __init__(self, ifname: str, directory: Path = UAPI_DIR, timeout: float = UAPI_TIMEOUT):
        self.ifname = ifname
        self.path = directory / f"{ifname}.sock"
        self.timeout = timeout

    async def _request(self, payload: str) -> list[str]:
        return (await self._request_text(payload)).rstrip("\n").split("\n")

    async def _request_text(self, payload: str) -> str:
        """The raw answer (``key=value`` lines), checked for its ``errno=`` line."""
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(
                    str(self.path), limit=_MAX_ANSWER
                )
                try:
                    writer.write(payload.encode())
                    await writer.drain()
                    answer = await reader.readuntil(b"\n\n")
                finally:
                    writer.close()
        except TimeoutError:
            raise DataplaneTimeout(
                f"{self.ifname}: UAPI socket {self.path} did not answer within {self.timeout} s"
            ) from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise InterfaceNotFound(
                f"{self.ifname}: no wireguard-go listening on {self.path}"
                " (interface not created, or its wireguard-go exited)"
            ) from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            raise BackendCallFailed(
                f"{self.ifname}: UAPI exchange on {self.path} failed: {type(exc).__name__}"
            ) from None
        text = answer.decode(errors="replace")
        code = _errno(text)
        if code != 0:
            name = errno_mod.errorcode.get(-code, str(-code))
            raise BackendCallFailed(
                f"{self.ifname}: wireguard-go refused the request (errno={code} {name})"
                + _HINTS.get(-code, ""),
                errno=-code,
            )
        return text

    async def alive(self) -> bool:
        """True if a wireguard-go answers on the socket."""
        try:
            await self._request("get=1\n\n")
        except InterfaceNotFound:
            return False
        return True

    def remove_stale_socket(self) -> bool:
        """Unlink a socket file nobody listens on (left by a killed wireguard-go)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True

    async def get(self) -> DeviceState:
        return parse_get(await self._request("get=1\n\n"))

    async def get_peer(self, public_key: str) -> PeerState | None:
        """One peer's state (``public_key`` base64), None if not configured. The UAPI has no
        per-peer read: wireguard-go still sends the whole device, but only this peer's lines
        are parsed (a hub's PSK write is confirmed in time independent of its peer count:
        parsing every peer of a 1,000-peer answer cost ~36 ms of CPU per write)."""
        text = "\n" + await self._request_text("get=1\n\n")
        start = text.find(f"\npublic_key={b64_to_hex(public_key)}\n")
        if start < 0:
            return None
        end = text.find("\npublic_key=", start + 1)
        block = text[start + 1:] if end < 0 else text[start + 1:end]
        return parse_get(block.rstrip("\n").split("\n")).peers.get(public_key)

    async def set(self, body: str) -> None:
        """Send ``set=1`` with ``body`` (``key=value`` lines, each ending in a newline)."""
        await self._request(f"set=1\n{body}\n")


def _errno(text: str) -> int:
    """The value of the answer's last ``errno=`` line (-EPROTO if none or not a number)."""
    at = text.rfind("\nerrno=")
    if at < 0:
        if not text.startswith("errno="):
            return -errno_mod.EPROTO
        at = -1
    value = text[at + 7:].split("\n", 1)[0]
    try:
        return int(value)
    except ValueError:
        return -errno_mod.EPROTO


def _key(hex_text: str) -> Secret | None:
    return None if hex_text == _ZERO_KEY else Secret(bytes.fromhex(hex_text))


def parse_get(lines: list[str]) -> DeviceState:
    """Parse a ``get=1`` answer into a DeviceState (public keys base64, allowed IPs normalised)."""
    private_key: Secret | None = None
    listen_port = 0
    peers: list[dict[str, object]] = []
    for line in lines:
        key, _, value = line.partition("=")
        if key == "public_key":
            peers.append({"public_key": hex_to_b64(value), "allowed_ips": set()})
        elif not peers:
            if key == "private_key":
                private_key = _key(value)
            elif key == "listen_port":
                listen_port = int(value)
        elif key == "allowed_ip":
            allowed = peers[-1]["allowed_ips"]
            assert isinstance(allowed, set)
            allowed.add(normalize_cidr(value))
        elif key in ("preshared_key", "endpoint"):
            peers[-1][key] = value
        elif key in (
            "last_handshake_time_sec",
            "last_handshake_time_nsec",
            "rx_bytes",
            "tx_bytes",
            "persistent_keepalive_interval",
        ):
            peers[-1][key] = int(value)
    return DeviceState(
        private_key=private_key,
        listen_port=listen_port,
        peers={str(p["public_key"]): _peer_state(p) for p in peers},
    )


def _peer_state(p: dict[str, object]) -> PeerState:
    def num(key: str) -> int:
        value = p.get(key, 0)
        return value if isinstance(value, int) else 0

    sec, nsec = num("last_handshake_time_sec"), num("last_handshake_time_nsec")
    endpoint = p.get("endpoint")
    endpoint_text = str(endpoint) if endpoint else None
    allowed = p["allowed_ips"]
    assert isinstance(allowed, set)
    psk = p.get("preshared_key")
    return PeerState(
        public_key=str(p["public_key"]),
        preshared_key=_key(psk) if isinstance(psk, str) else None,
        endpoint=endpoint_text,
        allowed_ips=frozenset(allowed),
        persistent_keepalive=num("persistent_keepalive_interval") or None,
        status=PeerStatus(
            public_key=str(p["public_key"]),
            last_handshake=sec + nsec / 1e9 if sec else None,
            rx_bytes=num("rx_bytes"),
            tx_bytes=num("tx_bytes"),
            endpoint=endpoint_text,
        ),
    )


def _peer_lines(peer: WgPeerSpec, *, endpoint: bool, allowed: bool, keepalive: bool) -> str:
    out = ""
    if endpoint and peer.endpoint:
        out += f"endpoint={peer.endpoint}\n"
    if keepalive:
        out += f"persistent_keepalive_interval={peer.persistent_keepalive or 0}\n"
    if allowed:
        out += "replace_allowed_ips=true\n"
        out += "".join(f"allowed_ip={cidr}\n" for cidr in peer.allowed_ips)
    return out


def plan_to_uapi(plan: DevicePlan) -> str:
    """The ``set=1`` body for a plan (empty string when there is nothing to write)."""
    body = ""
    if plan.private_key is not None:
        body += f"private_key={plan.private_key.reveal().hex()}\n"
    if plan.listen_port is not None:
        body += f"listen_port={plan.listen_port}\n"
    for pub in plan.remove_peers:
        body += f"public_key={b64_to_hex(pub)}\nremove=true\n"
    for change in plan.peer_changes:
        body += f"public_key={b64_to_hex(change.spec.public_key)}\n"
        if not change.create:
            body += "update_only=true\n"
        body += _peer_lines(
            change.spec,
            endpoint=change.create or change.endpoint,
            allowed=change.create or change.allowed_ips,
            keepalive=change.create or change.keepalive,
        )
    return body


def recreate_peer(peer: PeerState) -> str:
    """Remove and re-add a peer in one transaction, keeping its PSK, endpoint, allowed IPs and
    keepalive: its sessions are dropped, so the next packet starts a handshake (see
    docs/dataplane.md, "Making a new PSK take effect")."""
    spec = WgPeerSpec(
        public_key=peer.public_key,
        endpoint=peer.endpoint,
        allowed_ips=tuple(sorted(peer.allowed_ips)),
        persistent_keepalive=peer.persistent_keepalive,
    )
    pub = b64_to_hex(peer.public_key)
    body = f"public_key={pub}\nremove=true\npublic_key={pub}\n"
    if peer.preshared_key is not None:
        body += f"preshared_key={peer.preshared_key.reveal().hex()}\n"
    return body + _peer_lines(spec, endpoint=True, allowed=True, keepalive=True)
