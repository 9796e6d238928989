"""Redaction shared by every telemetry sink: logs, MQTT payloads and exception text.

Two layers, because a single check is one bug away from a leak:

1. :func:`redact_secrets` replaces every :class:`~gateway.keymaterial.Secret` anywhere in a value
   (dicts, lists, tuples, sets, nested) by its redacted text. A Secret is already redacted in
   ``repr``; doing it explicitly means no renderer fallback is ever trusted with the object.
2. :func:`to_safe` is the last step before serialisation. It rebuilds the value from JSON-safe
   primitives only. Raw ``bytes``/``bytearray``/``memoryview`` are *rejected*: replaced with
   :data:`BYTES_MARKER` and reported as a violation so the caller can flag the event. Anything
   else is turned into text and that text is scrubbed of Python bytes literals (``b'...'``),
   because an unknown object's ``repr`` (a dataclass, an exception) is where raw key bytes would
   slip through.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateway.keymaterial import Secret

__all__ = [
    "BYTES_MARKER",
    "VIOLATION_KEY",
    "Redaction",
    "looks_like_key_material",
    "redact_secrets",
    "scrub_text",
    "to_safe",
]

BYTES_MARKER = "<bytes redacted>"
VIOLATION_KEY = "log_redaction_violation"

# A Python bytes literal as repr() writes it, with or without the r/R prefix. Escapes inside are
# skipped pairwise so b'\'' and b"\"" are matched whole.
_BYTES_LITERAL = re.compile(r"""\b[rR]?[bB][rR]?(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")
# Key material written as text: 32+ hex digits (16+ bytes), or a run of 16+ base64 characters.
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{32,}")
_B64_TEXT = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_NAME_SEPARATORS = re.compile(r"[-_.]")
_MIN_B64_RUN = 16
# Random base64 changes character class (upper, lower, digit, other) at ~65 % of positions;
# names change it rarely (CamelCase ~20 %: "BucharestCentral" has 3 changes in 15).
_MIN_CLASS_CHANGES = 0.35
_PEM_MARKERS = ("-----BEGIN", "PRIVATE KEY")
# Deeper nesting than this in telemetry data is a bug; stop instead of recursing without bound.
_MAX_DEPTH = 16


@dataclass
class Redaction:
    """What :func:`to_safe` had to remove; ``violation`` means raw bytes or bytes literals."""

    violation: bool = False
    paths: list[str] = field(default_factory=list)

    def record(self, path: str) -> None:
        self.violation = True
        if len(self.paths) < 8:
            self.paths.append(path or "<root>")


def scrub_text(text: str) -> tuple[str, bool]:
    """Replace every Python bytes literal in ``text``; returns the text and whether it changed."""
    if "'" not in text and '"' not in text:  # a bytes literal needs a quote: the common case
        return text, False
    scrubbed, count = _BYTES_LITERAL.subn(BYTES_MARKER, text)
    return scrubbed, count > 0


def _char_class(c: str) -> int:
    return 0 if c.isupper() else 1 if c.islower() else 2 if c.isdigit() else 3


def looks_like_key_material(text: str) -> bool:
    """Whether ``text`` may be a key written as text: a PEM block, 32+ hex digits, or a run of
    16+ base64 characters (between name separators ``-``, ``_``, ``.``) whose character class
    changes as often as random data does, which names and words do not.

    For values that become identifiers (metric labels): a false positive refuses a strangely
    named series, a false negative would store a key in every scraper for months.
    """
    if any(marker in text for marker in _PEM_MARKERS):
        return True
    compact = "".join(text.split())
    for run in _HEX_KEY.findall(compact):
        if any(c.isdigit() for c in run) and any(c.isalpha() for c in run):
            return True
    if not _B64_TEXT.fullmatch(compact):
        return False
    # Separators are left out: in a name they join words, in base64url they are two of 64
    # symbols, and either way they say nothing about randomness.
    run = _NAME_SEPARATORS.sub("", compact)
    if len(run) < _MIN_B64_RUN:
        return False
    changes = sum(_char_class(a) != _char_class(b) for a, b in itertools.pairwise(run))
    return changes >= _MIN_CLASS_CHANGES * (len(run) - 1)


def redact_secrets(value: Any, _depth: int = 0) -> Any:
    """``value`` with every Secret replaced by its redacted text; other leaves untouched."""
    if isinstance(value, Secret):
        return repr(value)
    if _depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: redact_secrets(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact_secrets(v, _depth + 1) for v in value]
        return items if isinstance(value, list) else type(value)(items)
    return value


def to_safe(value: Any, report: Redaction, _path: str = "", _depth: int = 0) -> Any:
    """``value`` rebuilt from str/int/float/bool/None/dict/list only, fail-closed on bytes."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        text, changed = scrub_text(value)
        if changed:
            report.record(_path)
        return text
    if isinstance(value, bytes | bytearray | memoryview):
        report.record(_path)
        return BYTES_MARKER
    if isinstance(value, Secret):
        return repr(value)
    if isinstance(value, Enum):
        return to_safe(value.value, report, _path, _depth + 1)
    if _depth >= _MAX_DEPTH:
        return "<nesting too deep>"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _key_text(k, report, _path)
            out[key] = to_safe(v, report, f"{_path}.{key}", _depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [to_safe(v, report, f"{_path}[{i}]", _depth + 1) for i, v in enumerate(value)]
    # Unknown object: its text form is all that leaves, and that text is scrubbed like any string.
    try:
        text = str(value)
    except Exception:  # a broken __str__ must not take the log line (or the daemon) down
        text = f"<unprintable {type(value).__name__}>"
    return to_safe(text, report, _path, _depth + 1)


def _key_text(key: object, report: Redaction, path: str) -> str:
    if isinstance(key, Secret):
        return repr(key)
    if isinstance(key, bytes | bytearray | memoryview):
        report.record(path)
        return BYTES_MARKER
    text, changed = scrub_text(key if isinstance(key, str) else str(key))
    if changed:
        report.record(path)
    return text
