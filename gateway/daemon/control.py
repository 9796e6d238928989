"""The control socket: `qkd-gateway status` and `qkd-gateway rekey` talk to a running daemon.

A Unix stream socket (mode 0600, owned by the daemon's user) carrying one JSON object per line
each way. Requests: ``{"cmd": "status"}``, ``{"cmd": "rekey", "tunnel": NAME}``. Answers are
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Nothing secret is ever in an answer:
status reports epochs, key IDs, ages and alarms, never keys.

A status answer lists every tunnel (~0.5 KB each: 5 MB at 10,000 tunnels). Two request fields
narrow it: ``"tunnels": [NAME, ...]`` keeps those tunnels only, ``"summary": true`` replaces
the list by counts (tunnels, failed closed, low stock, sessions up) and the names of at most
``SUMMARY_NAMES`` failed-closed tunnels. The full answer is still allowed up to
``MAX_REPLY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["MAX_REPLY", "ControlError", "ControlServer", "request"]

#: A request line larger than this is refused: the socket is local, but still untrusted input.
MAX_LINE = 4096
#: A client that does not finish its request within this time is dropped.
CLIENT_TIMEOUT = 5.0
#: The longest answer a client reads: a full status of 16,384 tunnels (the most one peer
#: carries) at up to ~1 KB each, with room; the daemon is local and trusted by its client.
MAX_REPLY = 32 << 20
#: A summary names at most this many failed-closed tunnels (the counts cover all of them).
SUMMARY_NAMES = 100

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
                only, summary = _narrowing(req)
                answer = _narrow(await self._handler(req), only, summary)
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


def _narrowing(req: dict[str, Any]) -> tuple[set[str] | None, bool]:
    only, summary = req.get("tunnels"), req.get("summary", False)
    if only is not None and not (isinstance(only, list)
                                 and all(isinstance(n, str) for n in only)):
        raise ValueError("'tunnels' is a list of tunnel names")
    if not isinstance(summary, bool):
        raise ValueError("'summary' is true or false")
    return (None if only is None else set(only)), summary


def _narrow(answer: dict[str, Any], only: set[str] | None, summary: bool) -> dict[str, Any]:
    """The answer's ``tunnels`` mapping kept to ``only`` and/or summarised."""
    tunnels = answer.get("tunnels")
    if not isinstance(tunnels, dict) or (only is None and not summary):
        return answer
    if only is not None:
        tunnels = {k: v for k, v in tunnels.items() if k in only}
    if not summary:
        return {**answer, "tunnels": tunnels}
    states = [v for v in tunnels.values() if isinstance(v, dict)]
    closed = [k for k, v in tunnels.items() if isinstance(v, dict) and v.get("closed")]
    return {**answer, "tunnels": {
        "count": len(tunnels),
        "failed_closed": len(closed),
        "low_stock": sum(1 for v in states if v.get("low_stock")),
        "session_up": sum(1 for v in states if v.get("session_up")),
        "keys_installed": sum(int(v.get("keys_installed") or 0) for v in states),
        "failed_closed_names": sorted(closed)[:SUMMARY_NAMES],
    }}


async def request(path: Path, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to a running daemon and return its answer."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=MAX_REPLY), timeout
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
    except ValueError:  # StreamReader.readline past its limit
        raise ControlError(f"the daemon's answer is larger than {MAX_REPLY >> 20} MiB: ask for "
                           "a summary or some tunnels only") from None
    finally:
        writer.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise ControlError("the daemon sent an unreadable answer") from None
    if not isinstance(answer, dict):
        raise ControlError("the daemon sent an unreadable answer")
    return answer
