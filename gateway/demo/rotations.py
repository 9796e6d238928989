"""What the demo reports about key rotation: the daemons' own log events, checked against the
keys WireGuard actually holds.

Rotation count. Each daemon logs JSON lines (``telemetry.log.format: json``); one event per
installed key::

    {"timestamp": "...Z", "event": "tunnel_rekeyed", "tunnel": "<tunnel name>", "epoch": <int>}

:class:`RotationReader` follows a daemon's log file incrementally (the demo can run for hours)
and collects the distinct epochs per tunnel with the time each was logged, and the events an
operator watches (alarms raised and cleared, tunnels failing closed, sessions). A tunnel's
rotation count in the report is the number of epochs *both* ends logged: a key one side installed
and the other never did is not a rotation, it is an outage.

Matching keys. :func:`psk_matches` reads the preshared key of each end with
``wg show IF preshared-keys`` (kernel or wireguard-go alike) and compares SHA-256 digests in
constant time. The keys themselves are never printed, logged or kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.demo.netns import wg_show

__all__ = ["NOTABLE_EVENTS", "REKEY_EVENT", "LogEvent", "RotationReader", "psk_matches",
           "read_psk_digest"]

REKEY_EVENT = "tunnel_rekeyed"
# Events shown on the live view's event line and kept for the report.
NOTABLE_EVENTS = frozenset({
    "alarm_raised", "alarm_cleared", "tunnel_failed_closed", "tunnel_resumed",
    "peer_session_up", "peer_connection_closed", "daemon_ready", "tunnel_install_failed",
    "tunnel_activate_failed", "action_failed", "protocol_alarm",
})
# Fields of a notable event worth showing (never key material: the daemon logs none).
_SHOWN = ("alarm", "subject", "tunnel", "peer", "stored_key_count", "low_stock", "next_rekey_s",
          "reason", "error")
_EVENT_MEMORY = 200


@dataclass(frozen=True)
class LogEvent:
    """A notable event of one site's daemon."""

    site: str
    time: float  # Unix seconds, from the event's timestamp
    event: str
    fields: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        shown = " ".join(f"{k}={self.fields[k]}" for k in _SHOWN if k in self.fields)
        return f"{self.site}: {self.event} {shown}".rstrip()


def _time(record: dict[str, Any]) -> float | None:
    stamp = record.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class RotationReader:
    """Follow one daemon's JSON log file; ``poll()`` reads what was appended since last time."""

    def __init__(self, path: Path, site: str = "") -> None:
        self.path, self.site = path, site
        self.epochs: dict[str, set[int]] = {}
        self.times: dict[str, dict[int, float]] = {}  # tunnel -> epoch -> when it was logged
        self.events: deque[LogEvent] = deque(maxlen=_EVENT_MEMORY)
        self.alarms: list[LogEvent] = []  # every alarm_raised / alarm_cleared, in order
        self._offset = 0
        self._partial = b""

    def poll(self) -> dict[str, set[int]]:
        """Read new complete lines; return tunnel -> epochs seen so far."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.epochs
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        for line in lines:
            self._feed(line)
        return self.epochs

    def _feed(self, line: bytes) -> None:
        # Non-JSON lines (a traceback, wireguard-go's own output) are simply not events.
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        name = record.get("event")
        if name == REKEY_EVENT:
            tunnel, epoch = record.get("tunnel"), record.get("epoch")
            if isinstance(tunnel, str) and isinstance(epoch, int) and not isinstance(epoch, bool):
                self.epochs.setdefault(tunnel, set()).add(epoch)
                when = _time(record)
                if when is not None:
                    self.times.setdefault(tunnel, {}).setdefault(epoch, when)
        elif isinstance(name, str) and name in NOTABLE_EVENTS:
            shown = {k: record[k] for k in _SHOWN if k in record}
            event = LogEvent(self.site, _time(record) or 0.0, name, shown)
            self.events.append(event)
            if name in ("alarm_raised", "alarm_cleared"):
                self.alarms.append(event)

    def rotations(self, tunnel: str) -> set[int]:
        return self.epochs.get(tunnel, set())


async def read_psk_digest(netns: str, interface: str) -> bytes | None:
    """SHA-256 of the preshared key(s) of ``interface`` in ``netns``; None if there is none
    (``(none)``, interface missing, wg failed). The key text never leaves this function."""
    out = await wg_show(netns, interface, "preshared-keys")
    if out is None:
        return None
    # Lines are "<peer public key>\t<psk base64 | (none)>"; the two ends list different peers,
    # so only the key column is compared.
    keys = [line.split("\t")[1] for line in out.splitlines() if "\t" in line]
    if not keys or "(none)" in keys:
        return None
    return hashlib.sha256("\n".join(keys).encode()).digest()


async def psk_matches(netns_a: str, if_a: str, netns_b: str, if_b: str,
                      attempts: int = 3) -> bool:
    """True if both ends hold the same preshared key. A rotation can land between the two
    reads, so a mismatch is re-read (``attempts`` times, 0.2 s apart) before it counts."""
    for attempt in range(attempts):
        a, b = await asyncio.gather(read_psk_digest(netns_a, if_a),
                                    read_psk_digest(netns_b, if_b))
        if a is not None and b is not None and hmac.compare_digest(a, b):
            return True
        if attempt + 1 < attempts:
            await asyncio.sleep(0.2)
    return False
