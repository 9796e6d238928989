"""Choosing a backend: kernel WireGuard when the kernel has it, else wireguard-go, else an error
that says what to install."""

from __future__ import annotations

import os
import shutil
import socket
import struct
from pathlib import Path

from gateway.dataplane.errors import BackendUnavailable
from gateway.dataplane.kernel import KernelBackend
from gateway.dataplane.record import RecordBackend
from gateway.dataplane.types import BackendPreference, WireGuardBackend
from gateway.dataplane.userspace import UserspaceBackend

__all__ = ["kernel_wireguard_available", "select_backend"]

_NETLINK_GENERIC = 16
_GENL_ID_CTRL = 0x10
_CTRL_CMD_GETFAMILY = 3
_CTRL_ATTR_FAMILY_NAME = 2
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_PROBE_TIMEOUT = 1.0  # a genl lookup is a local syscall round trip


def _genl_family_exists(name: str) -> bool:
    """Ask the generic netlink controller for ``name`` (what `genl ctrl get name` does)."""
    payload = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(payload), _CTRL_ATTR_FAMILY_NAME) + payload
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BBH", _CTRL_CMD_GETFAMILY, 1, 0) + attr
    header = struct.pack("=IHHII", 16 + len(body), _GENL_ID_CTRL, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC) as sock:
        sock.settimeout(_PROBE_TIMEOUT)
        sock.bind((0, 0))
        sock.send(header + body)
        answer = sock.recv(65536)
    if len(answer) < 16:
        return False
    msg_type: int = struct.unpack("=IHHII", answer[:16])[1]
    if msg_type == _NLMSG_ERROR:
        code: int = struct.unpack("=i", answer[16:20])[0]
        return code == 0
    return msg_type == _GENL_ID_CTRL


def _module_loadable(name: str) -> bool:
    if Path(f"/sys/module/{name}").exists():
        return True
    release = os.uname().release
    for index in ("modules.dep", "modules.builtin"):
        path = Path("/lib/modules") / release / index
        try:
            if f"/{name}.ko" in path.read_text():
                return True
        except OSError:
            continue
    return False


def kernel_wireguard_available() -> bool:
    """True if kernel WireGuard is registered, or is a module the kernel can auto-load (creating
    the first wireguard link loads it)."""
    try:
        if _genl_family_exists("wireguard"):
            return True
    except OSError:
        pass
    return _module_loadable("wireguard")


def select_backend(
    preference: BackendPreference = "auto",
    *,
    netns: str | None = None,
    wireguard_go: str = "wireguard-go",
) -> WireGuardBackend:
    """The backend to use. ``auto``: kernel if available, else wireguard-go if on PATH.

    ``netns`` binds the backend to a named network namespace (tests, multi-tenant routers)."""
    if preference == "record":
        return RecordBackend()
    if preference not in ("auto", "kernel", "userspace"):
        raise ValueError(f"backend preference {preference!r}: use auto, kernel or userspace")
    if preference in ("auto", "kernel") and kernel_wireguard_available():
        return KernelBackend(netns)
    if preference == "kernel":
        raise BackendUnavailable(
            f"kernel WireGuard is not available on {os.uname().release}: load it with "
            "`modprobe wireguard` (Linux >= 5.6), or set the backend to userspace/auto"
        )
    if shutil.which(wireguard_go) is not None:
        return UserspaceBackend(netns, binary=wireguard_go)
    raise BackendUnavailable(
        f"{wireguard_go} not found and the kernel has no WireGuard: "
        "apt-get install wireguard-go (or load the kernel module: modprobe wireguard)"
    )
