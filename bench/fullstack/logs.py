"""Read the JSON-lines logs of the daemons and the KME network incrementally."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["JsonLog"]


class JsonLog:
    """New JSON records of one log file since the last read (a partial last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self, events: frozenset[str] | None = None) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            if not line.startswith(b"{"):
                continue
            if events is not None and not any(e.encode() in line for e in events):
                continue  # cheap pre-filter before parsing
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and (events is None or rec.get("event") in events):
                out.append(rec)
        return out

    def skip(self) -> None:
        """Forget everything written so far (up to the last complete line)."""
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, 2)
                start = max(self.offset, size - 65536)
                f.seek(start)
                tail = f.read()
        except FileNotFoundError:
            return
        self.offset = start + tail.rfind(b"\n") + 1 if b"\n" in tail else self.offset
