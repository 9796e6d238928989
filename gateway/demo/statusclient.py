"""Read a running site daemon's status over its control socket, as `qkd-gateway status` does.

The control socket (docs/operations.md) is a Unix stream socket carrying one JSON object per line
each way: ``{"cmd": "status"}`` in, ``{"ok": true, "tunnels": {...}, ...}`` out. Unix sockets are
reached by path, whatever network namespace the daemon runs in, so the demo reads every site's
status from its own process without entering a namespace.

The answer is what the daemon chose to expose: epochs, key IDs, ages, stock counts, alarms, never
keys. Fields added by newer daemons are shown when present; a daemon that lacks one is not an
error (:func:`field`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

__all__ = ["MAX_ANSWER", "daemon_status", "field"]

MAX_ANSWER = 1 << 20  # a status of a few tunnels is a few kB; a runaway answer is cut here
_TIMEOUT_S = 2.0  # a daemon that takes longer is busy: the view shows the last answer


async def daemon_status(socket_path: Path, timeout: float = _TIMEOUT_S) -> dict[str, Any] | None:
    """The daemon's status, or None if it does not answer (not started yet, busy, gone)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(socket_path),
                                                                limit=MAX_ANSWER)
            writer.write(b'{"cmd": "status"}\n')
            await writer.drain()
            line = await reader.readline()
    except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
    try:
        answer = json.loads(line)
    except ValueError:
        return None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        return None
    return answer


def field(status: dict[str, Any] | None, tunnel: str, *path: str) -> Any:
    """``status["tunnels"][tunnel][path...]``, or None wherever a level is missing."""
    node: Any = (status or {}).get("tunnels", {}).get(tunnel)
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node
