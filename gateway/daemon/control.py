"""The control socket: `qkd-gateway status` and `qkd-gateway rekey` talk to a running daemon.

A Unix stream socket (mode 0600, owned by the daemon's user) carrying one JSON object per line
each way. Requests: ``{"cmd": "status"}``, ``{"cmd": "rekey", "tunnel": NAME}``. Answers are
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Nothing secret is ever in an answer:
status reports epochs, key IDs, ages and alarms, never keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["ControlError", "ControlServer", "request"]

#: A request line larger than this is refused: the socket is local, but still untrusted input.
MAX_LINE = 4096
#: A client that does not finish its request within this time is dropped.
CLIENT_TIMEOUT = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(RuntimeError):
    """The daemon could not be reached or refused the request."""


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self._path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self._path), limit=MAX_LINE
            )
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
                req = json.loads(line)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError("a request is a JSON object with a 'cmd' string")
                answer = await self._handler(req)
            except (TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), CLIENT_TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), CLIENT_TIMEOUT)


async def request(path: Path, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running daemon and return its answer."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=1 << 20), timeout
        )
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(
            f"no daemon is listening on {path}: "
            "is `qkd-gateway run` (systemd: qkd-gateway) running?"
        ) from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: run as root") from None
    except TimeoutError:
        raise ControlError(f"timed out connecting to {path}") from None
    try:
        writer.write(json.dumps(req).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), timeout)
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise ControlError(f"the daemon on {path} did not answer within {timeout:.0f} s") from None
    finally:
        writer.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise ControlError("the daemon sent an unreadable answer") from None
    if not isinstance(answer, dict):
        raise ControlError("the daemon sent an unreadable answer")
    return answer
