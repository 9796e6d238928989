"""One NETLINK_XFRM socket (optionally inside a named network namespace) with asyncio I/O.

Why not pyroute2's NetlinkSocket: its receive path logs every decoded message at DEBUG level
(GETSA answers and EXPIRE notifications carry keys), and a refused request comes back with the
request echoed (a NEWSA carries its key). Here the socket sets NETLINK_CAP_ACK (errors echo only
the header), nothing is logged, and every request/answer is checked:

* a request with NLM_F_ACK ends with NLMSG_ERROR: errno 0 is success, anything else raises the
  typed error of errors.kernel_error (never a silent success: there is no lazy iterator);
* a GET/ALLOCSPI answer is one message or an NLMSG_ERROR; a dump ends with NLMSG_DONE;
* every exchange runs under a deadline (consts.XFRM_TIMEOUT) and one at a time per socket;
  answers to an earlier, timed-out request (other sequence numbers) are discarded.

The namespace socket is opened by a short-lived thread that setns()es into the namespace, so
the event loop's own thread never changes namespace and nothing forks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno as errno_mod
import os
import socket
import struct
import threading

from pyroute2.netlink import nlmsg

from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.errors import XfrmError, XfrmTimeout, XfrmUnavailable, kernel_error
from gateway.dataplane.xfrm.messages import MESSAGE_CLASSES

__all__ = ["NETNS_DIR", "XfrmSocket", "parse_datagram", "try_in_private_netns"]

NETNS_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_HDR = struct.Struct("=IHHII")  # struct nlmsghdr


def _enter_netns(name: str) -> None:
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # os.setns arrives with Python 3.12
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _new_socket(groups: tuple[int, ...]) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, c.NETLINK_XFRM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, c.RCVBUF)
        sock.setsockopt(c.SOL_NETLINK, c.NETLINK_CAP_ACK, 1)
        sock.setsockopt(c.SOL_NETLINK, c.NETLINK_EXT_ACK, 1)
        sock.bind((0, 0))
        for group in groups:
            sock.setsockopt(c.SOL_NETLINK, c.NETLINK_ADD_MEMBERSHIP, group)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _open(netns: str | None, groups: tuple[int, ...]) -> socket.socket:
    if netns is None:
        return _new_socket(groups)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def deliver(result: socket.socket | None, error: BaseException | None) -> None:
        if done.cancelled():  # the caller timed out meanwhile: do not leak the socket
            if result is not None:
                result.close()
        elif error is not None:
            done.set_exception(error)
        elif result is not None:
            done.set_result(result)

    def body() -> None:  # a throw-away thread: its namespace change dies with it
        try:
            _enter_netns(netns)
            sock = _new_socket(groups)
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, sock, None)

    threading.Thread(target=body, name=f"xfrm-netns-{netns}", daemon=True).start()
    return await done


def _private_exchange(request: bytes) -> tuple[int, str | None]:
    """In a fresh network namespace of this (throw-away) thread, send one request; return the
    kernel's errno (0: accepted) and reason. Whatever it created dies with the namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    with _new_socket(()) as sock:
        sock.setblocking(True)
        sock.settimeout(c.XFRM_TIMEOUT)
        sock.send(request)
        for mtype, _flags, _seq, payload, detail in parse_datagram(sock.recv(c.RECV_SIZE)):
            if mtype == c.NLMSG_ERROR and isinstance(payload, int):
                return payload, detail
    return 0, None


async def try_in_private_netns(request: bytes) -> tuple[int, str | None]:
    """Send ``request`` (a complete netlink message with NLM_F_ACK) from a private, throw-away
    network namespace: how to ask "would the kernel accept this?" without touching any real
    namespace. Needs CAP_SYS_ADMIN (OSError otherwise)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, str | None]] = loop.create_future()

    def deliver(result: tuple[int, str | None] | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        elif result is not None:
            done.set_result(result)

    def body() -> None:
        try:
            result = _private_exchange(request)
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, None, exc)
        else:
            loop.call_soon_threadsafe(deliver, result, None)

    threading.Thread(target=body, name="xfrm-probe", daemon=True).start()
    async with asyncio.timeout(c.NETNS_OPEN_TIMEOUT + c.XFRM_TIMEOUT):
        return await done


def _error_detail(data: bytes, offset: int, length: int, flags: int) -> str | None:
    """The extended-ack message of an NLMSG_ERROR, if the kernel sent one."""
    if not flags & c.NLM_F_ACK_TLVS:
        return None
    echoed_len = _HDR.unpack_from(data, offset + 20)[0]
    pos = offset + 20 + (16 if flags & c.NLM_F_CAPPED else (echoed_len + 3) & ~3)
    end = offset + length
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        if atype == c.NLMSGERR_ATTR_MSG:
            return data[pos + 4:pos + alen].split(b"\0", 1)[0].decode(errors="replace")
        pos += (alen + 3) & ~3
    return None


# (type, flags, sequence number, message or errno, extended-ack text)
Parsed = tuple[int, int, int, nlmsg | int, str | None]


def parse_datagram(data: bytes) -> list[Parsed]:
    """Split a netlink datagram. XFRM messages are decoded with messages.MESSAGE_CLASSES;
    NLMSG_ERROR becomes its (positive) errno and extended-ack text; other types are skipped."""
    out: list[Parsed] = []
    offset = 0
    while offset + _HDR.size <= len(data):
        length, mtype, flags, seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size or offset + length > len(data):
            break
        if mtype == c.NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, offset + 16)[0]
            out.append((mtype, flags, seq, code, _error_detail(data, offset, length, flags)))
        elif mtype == c.NLMSG_DONE:
            out.append((mtype, flags, seq, 0, None))
        elif mtype in MESSAGE_CLASSES:
            msg = MESSAGE_CLASSES[mtype](data[offset:offset + length])
            msg.decode()
            out.append((mtype, flags, seq, msg, None))
        offset += (length + 3) & ~3
    return out


class XfrmSocket:
    """A NETLINK_XFRM socket. ``groups``: multicast groups to join (for notifications)."""

    def __init__(self, netns: str | None = None, *, groups: tuple[int, ...] = (),
                 timeout: float = c.XFRM_TIMEOUT) -> None:
        self.netns = netns
        self.groups = groups
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._seq = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def where(self) -> str:
        return f"network namespace {self.netns}" if self.netns else "this network namespace"

    async def open(self) -> None:
        if self._sock is not None:
            return
        try:
            async with asyncio.timeout(c.NETNS_OPEN_TIMEOUT):
                self._sock = await _open(self.netns, self.groups)
        except TimeoutError:
            raise XfrmTimeout(f"xfrm: opening a socket in {self.where} took longer than "
                              f"{c.NETNS_OPEN_TIMEOUT} s") from None
        except FileNotFoundError:
            raise XfrmError(f"xfrm: {self.where} does not exist (no {NETNS_DIR}/{self.netns}): "
                            "create it first (`ip netns add`)") from None
        except OSError as exc:
            code = exc.errno or 0
            if code in (errno_mod.EPROTONOSUPPORT, errno_mod.EAFNOSUPPORT):
                raise XfrmUnavailable(
                    "xfrm: this kernel has no XFRM netlink (CONFIG_XFRM_USER); load it with "
                    "`modprobe xfrm_user`", operation="open socket", errno=code) from None
            raise kernel_error(f"open an XFRM socket in {self.where}", code) from None

    def close(self) -> None:
        """Close the socket; a receive waiting on it (another task) fails with XfrmError
        instead of waiting forever or touching a reused file descriptor."""
        if self._sock is None:
            return
        if self._waiter is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be gone at interpreter exit
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            if not self._waiter.done():
                self._waiter.set_exception(XfrmError(f"xfrm: socket in {self.where} closed"))
            self._waiter = None
        self._sock.close()
        self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise XfrmError("xfrm: socket used before open() or after close()")
        return self._sock

    async def recv(self) -> bytes:
        """One datagram (for notification listeners); no deadline: callers wait for events."""
        sock = self._socket()
        while True:
            try:
                return sock.recv(c.RECV_SIZE)
            except BlockingIOError:
                pass
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiter = waiter

            def ready(w: asyncio.Future[None] = waiter) -> None:
                if not w.done():
                    w.set_result(None)

            loop.add_reader(sock.fileno(), ready)
            try:
                await waiter
            finally:
                if self._waiter is waiter:  # not closed meanwhile
                    loop.remove_reader(sock.fileno())
                    self._waiter = None
            sock = self._socket()

    async def request(self, operation: str, msg: nlmsg, msg_type: int, flags: int) -> list[nlmsg]:
        """Send one request and collect its answer: [] for an ack, the answer message(s) for a
        GET/ALLOCSPI/dump. Raises the typed kernel error, or XfrmTimeout."""
        await self.open()
        async with self._lock:
            self._seq = self._seq % 0x7FFF_FFFF + 1
            seq = self._seq
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags
            msg["header"]["sequence_number"] = seq
            msg["header"]["pid"] = 0
            msg.encode()
            data = bytes(msg.data)
            msg.reset()  # drop the encoded copy (it may hold a key) as early as possible
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(operation, data, seq, flags)
            except TimeoutError:
                raise XfrmTimeout(f"xfrm: {operation} got no answer within {self.timeout} s "
                                  f"in {self.where}") from None

    async def _exchange(self, operation: str, data: bytes, seq: int, flags: int) -> list[nlmsg]:
        sock = self._socket()
        try:
            sock.send(data)  # netlink: the kernel handles the request before send() returns
        except OSError as exc:
            raise kernel_error(operation, exc.errno or errno_mod.EIO) from None
        dump = flags & c.NLM_F_DUMP == c.NLM_F_DUMP
        answers: list[nlmsg] = []
        while True:
            try:
                datagram = await self.recv()
            except OSError as exc:
                raise kernel_error(operation, exc.errno or errno_mod.EIO) from None
            for mtype, _flags, mseq, payload, detail in parse_datagram(datagram):
                if mseq != seq:
                    continue  # a late answer to an abandoned request
                if mtype == c.NLMSG_ERROR:
                    assert isinstance(payload, int)
                    if payload:
                        raise kernel_error(operation, payload, detail)
                    return answers
                if mtype == c.NLMSG_DONE:
                    return answers
                assert isinstance(payload, nlmsg)
                answers.append(payload)
                if not dump and not flags & c.NLM_F_ACK:
                    return answers

