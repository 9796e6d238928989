"""What goes wrong in a configuration file, said so an operator can fix it.

Exception tree::

    ValueError
     └── ConfigError            every problem of one file, found in one pass
          .problems: list[Problem(path, line, message, fix, column)]

``str(ConfigError)`` is one line per problem, sorted by line, e.g.::

    tunnels[1].rekey_interval (line 42): '5x' is not a duration; write e.g. 120s or 5m

A problem never quotes the value of a secret: where an inline secret is found, it says where,
not what; any value, key or path part that looks like key material (:func:`looks_like_key`) is
shown as ``<hidden...>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["HIDDEN", "ConfigError", "Problem", "looks_like_key", "redact", "render_path", "show"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the file.

    ``path`` is the YAML path (``tunnels[0].wireguard.allowed_ips[1]``), empty for problems of
    the file as a whole (unreadable, YAML syntax); ``line`` is 1-based, 0 when not known.
    """

    path: str
    line: int
    message: str
    fix: str = ""
    column: int = 0

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        if self.column:
            where += f", column {self.column}"
        head = f"{self.path} ({where})" if self.path else where
        tail = f"; {self.fix}" if self.fix else ""
        return f"{head}: {self.message}{tail}"


class ConfigError(ValueError):
    """The configuration cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: Iterable[Problem], source: str = "") -> None:
        # Sorted by line so the list reads top to bottom alongside the file; the path breaks
        # ties so the order is stable across runs.
        self.problems: list[Problem] = sorted(problems, key=lambda p: (p.line, p.path))
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


_PEM = ("-----BEGIN", "PRIVATE KEY")
_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")  # base64 and base64url
_HEX = re.compile(r"(?:0x)?[0-9A-Fa-f]{32,}")
HIDDEN = "<hidden: looks like key material>"


def looks_like_key(text: str) -> bool:
    """Whether ``text`` may be key material: part of a PEM block, 32+ hex digits, or 20+ base64
    characters mixing upper case, lower case and digits, or several of each case (whitespace
    ignored, so a pasted multi-line block counts).

    Messages never quote such a value: a false positive only costs a less specific message,
    a false negative would put a key into logs and tickets."""
    if any(marker in text for marker in _PEM):
        return True
    compact = "".join(text.split())
    if _HEX.fullmatch(compact):
        return True
    if len(compact) < 20 or not _B64.fullmatch(compact):
        return False
    # Random base64 mixes upper case, lower case and digits; words, names and paths (mostly
    # lower case) rarely do. 20 random base64 characters miss this test with odds ~1 in 15000.
    upper = sum(c.isupper() for c in compact)
    lower = sum(c.islower() for c in compact)
    digit = any(c.isdigit() for c in compact)
    return (upper >= 3 and lower >= 3) or (upper > 0 and lower > 0 and digit)


_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{20,}")


def redact(text: str) -> str:
    """``text`` with every word that looks like key material replaced by ``<hidden>``: for
    messages that quote a piece of the file (a URL, a tag, PyYAML's own syntax errors)."""
    return _TOKEN.sub(lambda m: "<hidden>" if looks_like_key(m.group()) else m.group(), text)


def show(value: object) -> str:
    """A short quotation of an input value for a message; never of one that looks like key
    material, and never of bytes (only a !!binary value is bytes here)."""
    if isinstance(value, bytes | bytearray):
        return "<binary data>"
    text = str(value)
    if looks_like_key(text) or redact(text) != text:
        return HIDDEN
    if len(text) > 40:
        text = text[:37] + "..."
    return f"'{text}'"


def render_path(loc: Iterable[str | int]) -> str:
    """``('tunnels', 1, 'peer')`` -> ``tunnels[1].peer``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = "<hidden>" if looks_like_key(part) else part
            out += f".{part}" if out else part
    return out
