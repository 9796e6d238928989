"""A TCP relay that lets the lab's sites reach an MQTT broker outside the lab.

The sites live in network namespaces whose only network is the lab's WAN (198.18.0.0/24), and
the host's namespace holds no lab interface (by design: the demo never touches the host's
network). ``qkd-gateway demo --mqtt HOST:PORT`` therefore listens on the KMS node's WAN address
(198.18.0.2:1883, inside the lab) and relays every connection to HOST:PORT as the host sees it,
so a broker on the host's loopback works. Each site's config says
``telemetry.mqtt.url: mqtt://198.18.0.2:1883``.

Bytes are copied as they come, in both directions, until either side closes; the relay reads no
MQTT (TLS to the broker, ``mqtts``, would pass through untouched). At most
:data:`MAX_CONNECTIONS` at a time (six daemons need six), and a broker that does not accept
within :data:`CONNECT_TIMEOUT_S` closes the site's connection, which the daemon retries with its
own capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from gateway.demo.errors import DemoError
from gateway.demo.netns import socket_in_netns

__all__ = ["CONNECT_TIMEOUT_S", "MAX_CONNECTIONS", "MQTT_PORT", "TcpRelay", "parse_host_port"]

MQTT_PORT = 1883
MAX_CONNECTIONS = 64
CONNECT_TIMEOUT_S = 5.0
_CHUNK = 64 * 1024


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); ValueError names the fix."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--mqtt {text!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()


class TcpRelay:
    """Listen on ``listen`` inside namespace ``netns``; relay to ``target`` from this process's
    namespace. ``async with`` starts and stops it; :attr:`connections` counts relayed ones."""

    def __init__(self, netns: str, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.netns, self.listen, self.target = netns, listen, target
        self.connections = 0
        self.failures = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpRelay:
        sock = socket_in_netns(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.listen)
            sock.listen(MAX_CONNECTIONS)
        except OSError as exc:
            sock.close()
            raise DemoError(f"the MQTT relay cannot listen on {self.listen[0]}:{self.listen[1]} "
                            f"in {self.netns}: {exc}") from None
        self._server = await asyncio.start_server(self._serve, sock=sock)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            if len(self._tasks) > MAX_CONNECTIONS:
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                self.failures += 1
                return
            upstream = up_writer
            self.connections += 1
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
            if task is not None:
                self._tasks.discard(task)
