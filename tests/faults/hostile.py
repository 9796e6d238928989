"""A hostile host on the WAN: connects to a gateway's peer port from another namespace and sends
garbage, oversized frame headers, replayed handshake bytes, or nothing at all (idle holds)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field

from gateway.demo.netns import socket_in_netns
from gateway.protocol.constants import MAX_PAYLOAD, WIRE_VERSION

__all__ = ["Attacker", "parse_pcap_stream"]


@dataclass
class Attacker:
    netns: str
    host: str
    port: int
    connects: int = 0
    refused: int = 0  # closed by the gateway before it read anything
    closed_by_peer: int = 0
    _holds: list[socket.socket] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = await asyncio.to_thread(socket_in_netns, self.netns, socket.AF_INET,
                                       socket.SOCK_STREAM)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)), 5)
        except BaseException:
            sock.close()
            raise
        self.connects += 1
        return await asyncio.open_connection(sock=sock)

    async def send_and_wait_close(self, data: bytes, timeout: float = 15) -> bool:
        """Send ``data``; True if the gateway closed the connection within ``timeout``. A
        connection reset during its TCP handshake counts as closed: admission control refuses
        a source over its rate or pending limit before reading anything (protocol wire v2)."""
        try:
            reader, writer = await self.connect()
        except ConnectionError:
            self.refused += 1
            return True
        try:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        chunk = await reader.read(65536)
                    except ConnectionError:
                        return True
                    if not chunk:
                        return True
        except TimeoutError:
            return False
        finally:
            writer.close()

    async def garbage(self, n: int, size: int = 1024) -> int:
        """``n`` connections of random bytes; how many the gateway closed."""
        results = await asyncio.gather(*(self.send_and_wait_close(os.urandom(size))
                                         for _ in range(n)))
        return sum(results)

    async def oversized(self, n: int) -> int:
        """Frame headers announcing more than MAX_PAYLOAD (then a trickle of payload)."""
        header = struct.pack(">BBH", WIRE_VERSION, 1, min(0xFFFF, MAX_PAYLOAD + 1))
        results = await asyncio.gather(*(self.send_and_wait_close(header + b"\0" * 512)
                                         for _ in range(n)))
        return sum(results)

    async def hold(self, n: int, stop: asyncio.Event) -> None:
        """Keep ``n`` idle connections open, reopening each as soon as it is closed."""
        async def one() -> None:
            while not stop.is_set():
                try:
                    reader, writer = await self.connect()
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.05)
                    continue
                try:
                    done = asyncio.ensure_future(reader.read(1))
                    halt = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({done, halt}, return_when=asyncio.FIRST_COMPLETED)
                    halt.cancel()
                    if done.done():
                        self.closed_by_peer += 1
                    else:
                        done.cancel()
                finally:
                    writer.close()
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(n)))


def parse_pcap_stream(pcap: bytes, src: str, port: int) -> bytes:
    """The TCP payload bytes ``src`` sent on the first connection that OPENED during the capture
    (its SYN was seen) and carried data, to or from ``port``, in a classic pcap (Ethernet or
    Linux cooked), in capture order."""
    import ipaddress
    magic = struct.unpack("<I", pcap[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", pcap[20:24])[0]
    off, out = 24, bytearray()
    fresh: set[frozenset[int]] = set()
    chosen: frozenset[int] | None = None
    want = ipaddress.IPv4Address(src).packed
    while off + 16 <= len(pcap):
        incl = struct.unpack(endian + "I", pcap[off + 8:off + 12])[0]
        pkt = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = pkt[{1: 14, 113: 16, 276: 20}.get(linktype, 14):]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0xF) * 4
        tcp = ip[ihl:struct.unpack(">H", ip[2:4])[0]]
        ports = frozenset(struct.unpack(">HH", tcp[:4]))
        if port not in ports:
            continue
        if tcp[13] & 0x02:  # SYN: a connection opened during the capture
            fresh.add(ports)
        payload = tcp[(tcp[12] >> 4) * 4:]
        if ip[12:16] != want or not payload or ports not in fresh:
            continue
        if chosen is None:
            chosen = ports
        if ports == chosen:
            out += payload
    return bytes(out)
