"""sd_notify against a real AF_UNIX datagram socket, by path and by abstract name."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.telemetry import SdNotifier, watchdog_interval

pytestmark = pytest.mark.unit


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify.sock")
        sock.bind(name)
    else:
        abstract = f"qkd-gateway-test-{uuid.uuid4().hex}"
        sock.bind("\0" + abstract)
        name = "@" + abstract
    sock.settimeout(2)
    yield name, sock
    sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_arrive(listener: tuple[str, socket.socket]) -> None:
    name, sock = listener
    n = SdNotifier(name)
    assert n.enabled
    assert n.ready("serving 2 tunnels")
    assert _recv(sock) == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=serving 2 tunnels"]
    assert n.status("rekeying wg-a\nREADY=1")
    # The injected newline is flattened: only one assignment arrives.
    assert _recv(sock) == ["STATUS=rekeying wg-a READY=1"]
    assert n.watchdog()
    assert _recv(sock) == ["WATCHDOG=1"]
    assert n.stopping("shutting down")
    assert _recv(sock) == ["STOPPING=1", "STATUS=shutting down"]
    n.close()


def test_env_variable_is_used(
    listener: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    assert SdNotifier().watchdog()
    assert _recv(sock) == ["WATCHDOG=1"]


def test_noop_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SdNotifier()
    assert not n.enabled
    assert n.ready() and n.watchdog() and n.stopping()


def test_missing_socket_reports_failure_without_raising(tmp_path: Path) -> None:
    n = SdNotifier(str(tmp_path / "absent.sock"))
    assert n.enabled
    assert n.watchdog() is False


def test_watchdog_interval_respects_pid() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": pid}) == 20.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 20.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({}) is None


async def test_watchdog_loop_pings(listener: tuple[str, socket.socket]) -> None:
    name, sock = listener
    sock.setblocking(False)
    n = SdNotifier(name)
    task = asyncio.create_task(n.watchdog_loop(interval=0.1))
    await asyncio.sleep(0.32)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = []
    while True:
        try:
            pings.append(sock.recv(64))
        except BlockingIOError:
            break
    assert 3 <= len(pings) <= 9 and set(pings) == {b"WATCHDOG=1"}
