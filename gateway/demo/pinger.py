"""A precise ICMP echo pinger that runs inside a network namespace from the asyncio loop.

Why not parse ping(8)? ping reports "no answer yet" when a reply is merely slower than the
interval, and when interrupted it counts the requests still in flight as lost. Here every request
has one fate, decided exactly once: *received* (a matching reply within ``timeout``) or *lost*
(none within ``timeout``; a reply that arrives later is counted as ``late`` but stays lost).
When the pinger stops it sends nothing more and waits out the requests in flight, so
``sent == received + lost`` holds in every final report.

The raw ICMP socket is created inside the site's namespace (see
:func:`gateway.demo.netns.socket_in_netns`) and connected to the target, so the kernel delivers
only that target's ICMP; the echo identifier separates two pingers to the same target.

Times are the kernel's: each reply carries its arrival time (``SO_TIMESTAMPNS``), and before a
request is declared lost every reply already queued on the socket is read. So a busy machine
that runs this process late (a loaded 2-core CI runner, the demo's own view) does not turn
answered pings into losses: a ping is lost only if its reply really arrived more than
``timeout`` after the request left, or never.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from gateway.demo.netns import socket_in_netns

__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_TIMEOUT_S", "PingStats", "Pinger"]

DEFAULT_INTERVAL_S = 0.05  # 20 pings/s: a 1 s outage shows as ~20 lost, visible but cheap
DEFAULT_TIMEOUT_S = 1.0  # like `ping -W 1`; a tunnel hiccup longer than this is a loss
_PAYLOAD = bytes(range(56))  # ping(8)'s default payload size
_ECHO_REQUEST, _ECHO_REPLY = 8, 0
_LATE_MEMORY = 4096  # expired sequence numbers remembered to recognise late replies
# Linux asm-generic/socket.h: SO_TIMESTAMPNS (= SCM_TIMESTAMPNS), a struct timespec per packet.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@ll")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", _ECHO_REQUEST, 0, 0, ident, seq)
    csum = _checksum(header + _PAYLOAD)
    return struct.pack("!BBHHH", _ECHO_REQUEST, 0, csum, ident, seq) + _PAYLOAD


def _parse_reply(packet: bytes, ident: int) -> int | None:
    """Sequence number of an echo reply to us in a raw IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:ihl + 8]
    if len(icmp) < 8:
        return None
    kind, code, _csum, rid, seq = struct.unpack("!BBHHH", icmp)
    if kind != _ECHO_REPLY or code != 0 or rid != ident:
        return None
    return int(seq)


@dataclass
class PingStats:
    """Counters of one pinger. ``lost`` includes ``late`` replies."""

    netns: str
    target: str
    sent: int = 0
    received: int = 0
    lost: int = 0
    late: int = 0
    send_errors: int = 0
    rtt_min_ms: float = float("inf")
    rtt_max_ms: float = 0.0
    rtt_sum_ms: float = field(default=0.0, repr=False)

    @property
    def in_flight(self) -> int:
        return self.sent - self.received - self.lost

    @property
    def rtt_avg_ms(self) -> float:
        return self.rtt_sum_ms / self.received if self.received else 0.0

    @property
    def loss_percent(self) -> float:
        done = self.received + self.lost
        return 100.0 * self.lost / done if done else 0.0


class Pinger:
    """Ping ``target`` from namespace ``netns`` every ``interval`` seconds until stopped.

    Args:
        netns: namespace to ping from.
        target: IPv4 address to ping (a WAN or tunnel address inside the lab).
        interval: seconds between requests (0.05 = 20/s).
        timeout: seconds a request may wait for its reply before it counts as lost.
    """

    def __init__(self, netns: str, target: str, *, interval: float = DEFAULT_INTERVAL_S,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if ipaddress.ip_address(target).version != 4:
            raise ValueError("the pinger speaks ICMPv4 only")
        self.stats = PingStats(netns, target)
        self.interval, self.timeout = interval, timeout
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._pending: OrderedDict[int, float] = OrderedDict()  # seq -> send time
        self._expired: OrderedDict[int, None] = OrderedDict()
        self._stop = asyncio.Event()
        self._drained = asyncio.Event()  # stopped and nothing in flight any more

    def stop(self) -> None:
        """Stop sending; :meth:`run` returns once the requests in flight are settled."""
        self._stop.set()

    async def run(self, count: int | None = None) -> PingStats:
        """Ping until :meth:`stop` (or ``count`` requests); return the final counters."""
        sock = socket_in_netns(self.stats.netns, socket.AF_INET, socket.SOCK_RAW,
                               socket.IPPROTO_ICMP)
        loop = asyncio.get_running_loop()
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            # Connecting a raw socket makes the kernel filter replies by source address.
            sock.connect((self.stats.target, 0))
            loop.add_reader(sock.fileno(), self._read_all, sock)
            try:
                await self._send_loop(sock, loop, count)
                if self._pending:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._drained.wait(), self.timeout)
                self._read_all(sock)
                self._expire(float("inf"))
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()
        return self.stats

    async def _send_loop(self, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                         count: int | None) -> None:
        start = loop.time()
        n = 0
        while not self._stop.is_set() and (count is None or n < count):
            # A fixed schedule (not sleep(interval) after each send) keeps 20/s without drift.
            delay = start + n * self.interval - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
            # Replies already queued count before anything is declared lost.
            self._read_all(sock)
            now = time.time()
            self._expire(now - self.timeout)
            seq = n & 0xFFFF
            self._pending[seq] = now
            self.stats.sent += 1
            try:
                sock.send(_echo_request(self._ident, seq))
            except OSError:
                # Unreachable network, full buffer: the request counts and will expire as lost.
                self.stats.send_errors += 1
            n += 1
        # Reaching ``count`` is a stop like any other: the receiver then signals the drain.
        self._stop.set()

    def _expire(self, sent_before: float) -> None:
        while self._pending:
            seq, sent_at = next(iter(self._pending.items()))
            if sent_at > sent_before:
                break
            self._lose(seq)

    def _lose(self, seq: int) -> None:
        del self._pending[seq]
        self.stats.lost += 1
        self._expired[seq] = None
        if len(self._expired) > _LATE_MEMORY:
            self._expired.popitem(last=False)

    def _read_all(self, sock: socket.socket) -> None:
        """Read every reply queued on the socket, each with the kernel's arrival time."""
        while True:
            try:
                packet, ancillary, _flags, _addr = sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket; the request expires on its own
            arrived = time.time()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and \
                        len(data) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack(data[:_TIMESPEC.size])
                    arrived = sec + nsec / 1e9
            seq = _parse_reply(packet, self._ident)
            if seq is not None:
                self._settle(seq, arrived)

    def _settle(self, seq: int, arrived: float) -> None:
        sent_at = self._pending.get(seq)
        if sent_at is not None and arrived - sent_at <= self.timeout:
            del self._pending[seq]
            rtt = max(0.0, arrived - sent_at) * 1000.0
            st = self.stats
            st.received += 1
            st.rtt_sum_ms += rtt
            st.rtt_min_ms = min(st.rtt_min_ms, rtt)
            st.rtt_max_ms = max(st.rtt_max_ms, rtt)
        elif sent_at is not None:
            self._lose(seq)  # answered, but after the timeout: lost, and late
            del self._expired[seq]
            self.stats.late += 1
        elif seq in self._expired:
            del self._expired[seq]
            self.stats.late += 1
        if not self._pending and self._stop.is_set():
            self._drained.set()
