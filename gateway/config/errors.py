"""What goes wrong in a configuration file, said so an operator can fix it.

Exception tree::

    ValueError
     └── ConfigError            every problem of one file, found in one pass
          .problems: list[Problem(path, line, message, fix, column)]

``str(ConfigError)`` is one line per problem, sorted by line, e.g.::

    tunnels[1].rekey_interval (line 42): '5x' is not a duration; write e.g. 120s or 5m

A problem never quotes the value of a secret: where an inline secret is found, it says where,
not what.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "render_path"]


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


def render_path(loc: Iterable[str | int]) -> str:
    """``('tunnels', 1, 'peer')`` -> ``tunnels[1].peer``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
