"""Small, synchronous helpers around network namespaces: `ip` commands and sockets inside one.

The lab drives namespaces with iproute2's `ip` (what an operator would type to inspect or repair
the lab by hand) rather than netlink from this process: every step can be replayed from the log.

A socket belongs to the network namespace of the thread that created it, for its whole life.
:func:`socket_in_netns` therefore creates sockets in a short-lived thread that first joins the
namespace with setns(2); the socket can then be used from the asyncio loop in any thread, and no
thread of this process ever stays in a foreign namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import subprocess
import threading
from pathlib import Path

from gateway.demo.errors import NetnsError

__all__ = [
    "NETNS_DIR",
    "list_netns",
    "netns_exists",
    "netns_pids",
    "quiet_output",
    "run_ip",
    "socket_in_netns",
]

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
# An `ip` command finishes in milliseconds; a hung one means a wedged kernel or lock, and the lab
# must fail with a message rather than hang the operator's terminal.
IP_TIMEOUT_S = 10.0


def run_ip(*args: str, check: bool = True, timeout: float = IP_TIMEOUT_S) -> str:
    """Run ``ip ARGS``; return stdout. A failure raises :class:`NetnsError` quoting the command
    and iproute2's own message (unless ``check`` is false)."""
    argv = ["ip", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise NetnsError("`ip` not found: install iproute2 (apt-get install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise NetnsError(f"`{' '.join(argv)}` did not finish in {timeout:g} s") from None
    if check and done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def list_netns() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = run_ip("netns", "list")
    # Lines look like "name (id: 3)" or just "name".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``name`` (``ip netns pids``)."""
    out = run_ip("netns", "pids", name, check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _setns(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in_netns(
    netns: str, family: int, type_: int, proto: int = 0
) -> socket.socket:
    """A new non-blocking socket living in network namespace ``netns``."""
    path = NETNS_DIR / netns
    if not path.exists():
        raise NetnsError(f"network namespace {netns!r} does not exist (ip netns list)")
    result: list[socket.socket] = []
    failure: list[BaseException] = []

    def create() -> None:
        try:
            _setns(path)
            result.append(socket.socket(family, type_, proto))
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    # The thread ends right after creating the socket, so its namespace switch dies with it.
    thread = threading.Thread(target=create, name=f"setns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout=IP_TIMEOUT_S)
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError) and exc.errno == errno.EPERM:
            raise NetnsError(f"entering namespace {netns!r} needs root") from None
        raise NetnsError(f"cannot open a socket in namespace {netns!r}: {exc}") from None
    if not result:
        raise NetnsError(f"opening a socket in namespace {netns!r} timed out")
    sock = result[0]
    sock.setblocking(False)
    return sock


#: `wg show` inside a lab namespace reads one interface; it answers in milliseconds on a host, but
#: took over 5 s in the kernel lab (QEMU TCG) at load average 10.
WG_TIMEOUT_S = 20.0


async def quiet_output(argv: list[str], timeout: float) -> str | None:
    """The standard output of ``argv`` if it succeeded within ``timeout``; None if it failed or
    hung (then it is killed)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):  # it may end just as the timer fires
            proc.kill()
        await proc.wait()
        return None
    return out.decode(errors="replace") if proc.returncode == 0 else None


async def wg_show(netns: str, interface: str, what: str) -> str | None:
    """``wg show INTERFACE WHAT`` inside ``netns``; None if it failed or hung."""
    return await quiet_output(["ip", "netns", "exec", netns, "wg", "show", interface, what],
                              WG_TIMEOUT_S)
