"""YAML to plain Python data, remembering the line of every key and list item.

PyYAML's ``safe_load`` throws the positions away, and it keeps the last of two equal keys without
a word. Here the file is composed into nodes (``yaml.compose``) and walked by hand: scalars are
built by PyYAML's safe constructor, mappings and sequences by the walk, which records
``path -> line`` and reports duplicate keys. Merge keys (``<<``) are not supported: they hide
where a value came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.config.errors import ConfigError, Problem, render_path

__all__ = ["Document", "Loc", "parse_yaml", "read_yaml"]

Loc = tuple[str | int, ...]


@dataclass
class Document:
    """The parsed file: plain data plus the 1-based line of each path in it."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int:
        """Line of ``loc``, or of its nearest ancestor present in the file (e.g. the mapping a
        required key is missing from)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 0


class _Walker:
    def __init__(self) -> None:
        self.constructor = yaml.SafeLoader("")  # a bare loader is a safe constructor
        self.doc = Document(data=None)

    def walk(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            out: list[Any] = []
            for i, item in enumerate(node.value):
                self.doc.lines.setdefault((*loc, i), item.start_mark.line + 1)
                out.append(self.walk(item, (*loc, i)))
            return out
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.doc.problems.append(
                    Problem(render_path(loc), line, "a key must be a plain word",
                            "write `key: value`, with the key as text")
                )
                continue
            # The key's literal text, not its YAML 1.1 reading: `on:` stays "on", not True.
            key = str(key_node.value)
            if key == "<<":
                self.doc.problems.append(
                    Problem(render_path(loc), line, "merge keys (<<) are not supported",
                            "write the keys out in full")
                )
                continue
            if key in out:
                first = self.doc.lines[(*loc, key)]
                self.doc.problems.append(
                    Problem(render_path((*loc, key)), line,
                            f"key '{key}' appears twice (first on line {first})",
                            "remove one of them")
                )
                continue
            self.doc.lines[(*loc, key)] = line
            out[key] = self.walk(value_node, (*loc, key))
        return out


def parse_yaml(text: str, name: str = "<config>") -> Document:
    """Parse ``text``; YAML syntax errors raise :class:`ConfigError` with line and column.

    Structural problems that still allow a reading (duplicate keys) are left in
    ``Document.problems`` so they are reported together with everything else.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or "not valid YAML"
        if exc.context:
            what = f"{exc.context}, {what}"
        raise ConfigError(
            [
                Problem(
                    "",
                    mark.line + 1 if mark else 0,
                    f"YAML syntax error: {what}",
                    "check the indentation and quoting here and on the line above",
                    mark.column + 1 if mark else 0,
                )
            ],
            name,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", 0, f"YAML error: {exc}", "")], name) from None
    walker = _Walker()
    if root is None:
        return walker.doc
    walker.doc.lines[()] = root.start_mark.line + 1
    try:
        walker.doc.data = walker.walk(root, ())
    except yaml.MarkedYAMLError as exc:
        # Tags this loader will not build (!!python/object, unknown !tags, bad !!binary).
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(
            [Problem("", mark.line + 1 if mark else 0,
                     f"YAML value cannot be read: {exc.problem or exc.context}",
                     "remove the !tag and write plain text, numbers, lists or mappings",
                     mark.column + 1 if mark else 0)],
            name,
        ) from None
    return walker.doc


def read_yaml(path: Path) -> Document:
    """Read and parse the file at ``path``; an unreadable file is a :class:`ConfigError` too."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [Problem("", 0, f"configuration file {path} does not exist",
                     "check the path, or start from an example in configs/")],
            str(path),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(
            [Problem("", 0, f"cannot read configuration file {path}: {reason}", "")], str(path)
        ) from None
    return parse_yaml(text, str(path))
