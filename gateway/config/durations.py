"""Durations as operators write them: ``120s``, ``5m``, ``2h``, ``1m30s``, ``250ms`` or a plain
number of seconds. Stored as ``float`` seconds, which is what ``asyncio`` timeouts and
``loop.call_later`` take, so no conversion happens at the call sites.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def parse_duration(value: object) -> float:
    """Seconds in ``value``; raises ``ValueError`` (without echoing the value) when it is not a
    non-negative duration. Booleans are refused: YAML reads ``yes``/``no`` as booleans and a
    duration of ``True`` is always a typo."""
    if isinstance(value, bool):
        raise ValueError("a yes/no value is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if not _WHOLE.fullmatch(text):
            raise ValueError("not a duration")
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    else:
        raise ValueError("not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest faithful spelling (``120s`` -> ``2m``, ``90`` -> ``1m30s``, ``0.25`` ->
    ``250ms``), for summaries."""
    if seconds == 0:
        return "0s"
    if seconds < 1 or seconds != int(seconds):
        ms = round(seconds * 1000)
        if ms % 1000:
            return f"{ms}ms"
        seconds = ms / 1000
    rest = int(seconds)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            out += f"{count}{unit}"
    return out
