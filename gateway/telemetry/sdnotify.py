"""sd_notify(3) without libsystemd: readiness, status text, watchdog pings, stopping.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``). When the variable is
unset (not started by systemd, or ``Type=simple``) every call is a cheap no-op, so the daemon
calls these unconditionally.

A failed notification is logged and reported as ``False``, never raised: systemd's own watchdog
is the safety net, and crashing the gateway because its supervisor is slow would turn a
monitoring hiccup into a tunnel outage.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

__all__ = ["SdNotifier", "watchdog_interval"]

_log = structlog.get_logger(__name__)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The WatchdogSec= period in seconds if systemd expects pings from *this* process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    # WATCHDOG_PID names the process the watchdog is for; a child that inherited the variable
    # must not ping on its parent's behalf.
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _address(raw: str) -> str | None:
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # vsock: and other transports are not used on a router


def _one_line(text: str) -> str:
    # A newline in STATUS would let the text inject another assignment (READY=1, MAINPID=...).
    return " ".join(text.split())


class SdNotifier:
    """A client of the service manager's notification socket.

    Args:
        address: the socket (``/run/...`` or ``@abstract``); ``$NOTIFY_SOCKET`` when ``None``.
    """

    def __init__(self, address: str | None = None) -> None:
        raw = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        self._address = _address(raw) if raw else None
        if raw and self._address is None:
            _log.warning("sd_notify_unsupported_socket", notify_socket=raw)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; ``True`` if sent (or disabled)."""
        if self._address is None:
            return True
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Non-blocking: a full receive queue on systemd's side must not stall the loop.
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            _log.warning("sd_notify_failed", error=exc.strerror or str(exc), sent=assignments[0])
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def watchdog_loop(self, interval: float | None = None) -> None:
        """Ping at half the watchdog period until cancelled; returns at once if none is set.

        Pinging from an event-loop task proves the loop still turns: a wedged loop stops the
        pings and systemd restarts the service, which is the point of ``WatchdogSec=``.
        """
        period = watchdog_interval() if interval is None else interval
        if period is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(period / 2)
