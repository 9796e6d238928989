"""YAML to plain Python data, remembering the line of every key and list item.

PyYAML's ``safe_load`` throws the positions away, and it keeps the last of two equal keys without
a word. Here the file is composed into nodes (``yaml.compose``) and walked by hand: scalars are
built by PyYAML's safe constructor, mappings and sequences by the walk, which records
``path -> line`` and reports duplicate keys. Merge keys (``<<``) are not supported: they hide
where a value came from.

The file may be hostile or mangled, so the walk never trusts it: a value that does not fit its
tag (``!!int abc``), a tag other than the plain YAML types (``!!python/...``, ``!custom``, on a
scalar, list or mapping), an alias to a list or mapping that contains it, nesting deeper than
``MAX_DEPTH`` and aliases expanding past ``MAX_VALUES`` values are each a located problem, never
an exception from PyYAML or a recursion.
"""

from __future__ import annotations

import gc
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import GeneratorType
from typing import Any

import yaml

from gateway.config.errors import ConfigError, Problem, redact, render_path, show

__all__ = ["Document", "Loc", "SpelledInt", "as_text", "parse_yaml", "read_yaml"]

Loc = tuple[str | int, ...]


@dataclass
class Document:
    """The parsed file: plain data plus the 1-based line of each path in it."""

    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # The text of each plain scalar that YAML read as something else (`yes` -> True, `0x10` ->
    # 16), so messages can quote what the operator typed.
    raw: dict[Loc, str] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int:
        """Line of ``loc``, or of its nearest ancestor present in the file (e.g. the mapping a
        required key is missing from)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 0


# Limits that keep a hostile or mangled file from exhausting memory or the stack. A real
# configuration is a few levels deep. Sized for the largest site the daemon carries: 16,384
# tunnels to one peer (gateway.protocol MAX_TUNNELS_PER_PEER) of ~20 values each (a WireGuard
# tunnel of the bench: 19; 10,000 of them are 3.7 MB of YAML), or 10,000 tunnels of up to 50
# values (XFRM with several subnets) with comments. An alias bomb stops at MAX_VALUES (the
# expansion is counted, not the text): about a second of walking.
MAX_DEPTH = 32
MAX_VALUES = 500_000
MAX_BYTES = 8 << 20

#: Text values up to this length are shared between equal occurrences (names, modes, files).
_SHARED_TEXT = 64

_STD = "tag:yaml.org,2002:"
_MAP, _SEQ = _STD + "map", _STD + "seq"
# Scalar tags the safe constructor builds, and what each reads as (for the message).
_SCALARS = {_STD + "str": "text", _STD + "int": "a whole number", _STD + "float": "a number",
            _STD + "bool": "true or false", _STD + "null": "null", _STD + "timestamp": "a date",
            _STD + "binary": "base64 binary"}
# What YAML 1.1 resolves a plain `<<` and `=` to; as values they are plain text.
_INDICATORS = (_STD + "merge", _STD + "value")
_TAG_FIX = "remove the tag and write plain text, numbers, lists or mappings"
# What PyYAML's scalar constructors raise on a value that does not fit its tag
# (`!!int abc` -> ValueError, `!!timestamp abc` -> AttributeError, `!!bool maybe` -> KeyError).
_BAD_SCALAR = (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError, IndexError,
               OverflowError)


def _tag(tag: str) -> str:
    short = redact("!!" + tag[len(_STD):] if tag.startswith(_STD) else tag)
    return short if len(short) <= 60 else short[:57] + "..."


class SpelledInt(int):
    """An int YAML 1.1 read from text that is not plain decimal (``0123`` is octal 83, ``0x10``
    is 16, ``1_000`` is 1000). Numeric fields use the number; name fields use ``text``, what
    the operator typed (an SAE ID ``0123`` must not become ``83``)."""

    text: str = ""


_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")


def as_text(value: Any) -> str | None:
    """A name-like scalar as the operator wrote it (str, or an int in its own spelling)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value.text if isinstance(value, SpelledInt) else str(value)
    return None


class _Stop(Exception):
    """The walk cannot go on (expansion cap); carries the one problem to report."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Composer(yaml.SafeLoader):
    """A safe loader that remembers where each alias is used. PyYAML hands back the anchored
    node itself for an alias, which knows only the anchor's position."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.aliases: dict[tuple[int, object], tuple[yaml.Mark, str]] = {}

    # The stubs say ``index: int``; for a mapping value PyYAML passes the key node.
    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            self.aliases[_slot(parent, index)] = (event.start_mark, str(event.anchor))
        return super().compose_node(parent, index)


def _slot(parent: object, index: object) -> tuple[int, object]:
    # Sequence items are composed with their position, mapping values with their key node.
    return id(parent), index if isinstance(index, int) else id(index)


class _Walker:
    def __init__(self, aliases: dict[tuple[int, object], tuple[yaml.Mark, str]]) -> None:
        self.constructor = yaml.SafeLoader("")  # a bare loader is a safe constructor
        self.doc = Document(data=None)
        self.aliases = aliases
        self.fatal: list[Problem] = []  # values that cannot be read: no validation after these
        self.open: set[int] = set()  # nodes being walked, to catch an alias to an ancestor
        self.count = 0
        self.outer_alias: tuple[Loc, yaml.Mark] | None = None
        # One object per distinct short text (`bench0`, `qkd+pqc` in every tunnel): the copies
        # die as soon as read, instead of living on scattered among the walk's temporaries,
        # whose freed memory the allocator could then not give back.
        self.texts: dict[str, str] = {}

    def _problem(self, loc: Loc, mark: yaml.Mark, message: str, fix: str) -> None:
        self.fatal.append(Problem(render_path(loc), mark.line + 1, message, fix, mark.column + 1))

    def child(self, parent: yaml.Node, index: object, node: yaml.Node, loc: Loc) -> Any:
        """Walk ``node`` found in ``parent`` at ``index``; record its line at ``loc``."""
        alias = self.aliases.get(_slot(parent, index))
        # Inside an alias's expansion every value is placed where the alias is used: that is
        # the place the YAML path (and so the operator reading it) refers to.
        mark = alias[0] if alias else self.outer_alias[1] if self.outer_alias else \
            node.start_mark
        self.doc.lines.setdefault(loc, mark.line + 1)
        if alias is None:
            return self.walk(node, loc, mark)
        if id(node) in self.open:
            name = redact(alias[1][:40])
            self._problem(loc, mark, f"alias *{name} refers to the list or mapping that "
                          "contains it", "write the values out instead")
            return None
        if self.outer_alias is not None:
            return self.walk(node, loc, mark)
        # Lines inside the expansion are the anchor's; the cap names the outermost alias.
        self.outer_alias = (loc, mark)
        try:
            return self.walk(node, loc, mark)
        finally:
            self.outer_alias = None

    def walk(self, node: yaml.Node, loc: Loc, mark: yaml.Mark) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            if self.outer_alias is None:
                raise _Stop(Problem(render_path(loc), mark.line + 1,
                                    f"the file holds more than {MAX_VALUES} values",
                                    "a configuration needs about 20 per tunnel",
                                    mark.column + 1))
            where, at = self.outer_alias
            raise _Stop(Problem(render_path(where), at.line + 1,
                                f"aliases expand the file to more than {MAX_VALUES} values",
                                "write the values out, or use fewer aliases inside aliases",
                                at.column + 1))
        if len(self.open) >= MAX_DEPTH:
            raise _Stop(Problem(render_path(loc), mark.line + 1,
                                f"lists or mappings are nested more than {MAX_DEPTH} deep",
                                "a configuration needs a handful of levels", mark.column + 1))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, loc, mark)
        expected = _MAP if isinstance(node, yaml.MappingNode) else _SEQ
        if node.tag != expected:
            self._problem(loc, mark, f"unsupported YAML tag {_tag(node.tag)}", _TAG_FIX)
            return None
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            return [self.child(node, i, item, (*loc, i)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, loc: Loc, mark: yaml.Mark) -> Any:
        if node.tag in _INDICATORS:
            return str(node.value)
        what = _SCALARS.get(node.tag)
        if what is None:
            self._problem(loc, mark, f"unsupported YAML tag {_tag(node.tag)}", _TAG_FIX)
            return None
        try:
            value = self.constructor.construct_object(node, deep=True)
            # The constructor remembers every node it built (for recursive data, which a
            # scalar is not): forgetting it lets a big file's nodes go as soon as walked.
            self.constructor.constructed_objects.pop(node, None)
        except _BAD_SCALAR:
            # The constructor's own message quotes the value, which may be a pasted secret.
            self._problem(loc, mark, f"cannot be read as {what} ({_tag(node.tag)})",
                          "put it in quotes and remove any !! tag")
            return None
        if isinstance(value, int) and not isinstance(value, bool) \
                and not _DECIMAL.fullmatch(node.value):
            value = SpelledInt(value)
            value.text = str(node.value)
        if not isinstance(value, str):
            self.doc.raw[loc] = str(node.value)
        elif type(value) is str and len(value) <= _SHARED_TEXT:
            value = self.texts.setdefault(value, value)
        return value

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
            # Interned: the same few names in every tunnel, one object each.
            key = sys.intern(str(key_node.value))
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
                            f"key {show(key)} appears twice (first on line {first})",
                            "remove one of them")
                )
                continue
            self.doc.lines[(*loc, key)] = line
            out[key] = self.child(node, key_node, value_node, (*loc, key))
        return out


def _syntax_error(exc: yaml.MarkedYAMLError, name: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or "not valid YAML"
    if exc.context:
        what = f"{exc.context}, {what}"
    what = redact(what)  # PyYAML quotes alias, anchor and tag names, where a key may be pasted
    return ConfigError(
        [Problem("", mark.line + 1 if mark else 0, f"YAML syntax error: {what}",
                 "check the indentation and quoting here and on the line above",
                 mark.column + 1 if mark else 0)],
        name,
    )


def parse_yaml(text: str, name: str = "<config>") -> Document:
    """Parse ``text``; YAML syntax errors, values that cannot be read (``!!int abc``, unknown
    tags), alias loops and oversized expansions raise :class:`ConfigError` with line and column.

    Structural problems that still allow a reading (duplicate keys) are left in
    ``Document.problems`` so they are reported together with everything else.
    """
    # Every value is an object: with the cyclic garbage collector running, its passes over
    # ever more live objects made a 10,000-tunnel file take minutes. Nothing here forms cycles
    # that outlive this call (an alias cycle is refused), so collection waits until the end.
    collecting = gc.isenabled()
    gc.disable()
    try:
        doc = _fast_parse(text, name)
        if doc is not None:
            return doc
        root, aliases = _compose(text, name)
        return _walk(_Walker(aliases), root, name)
    finally:
        if collecting:
            gc.enable()


def _walk(walker: _Walker, root: yaml.Node | None, name: str) -> Document:
    if root is None:
        return walker.doc
    walker.doc.lines[()] = root.start_mark.line + 1
    try:
        walker.doc.data = walker.walk(root, (), root.start_mark)
    except _Stop as stop:
        raise ConfigError([stop.problem], name) from None
    if walker.fatal:
        raise ConfigError(walker.fatal, name)
    return walker.doc


class _Fallback(Exception):
    """The fast path cannot read this file as the Python composer would: take that one."""


def _fast_parse(text: str, name: str) -> Document | None:
    """libyaml's parser (~10x faster than PyYAML's) for the common file: a single document
    without aliases. Nodes are composed lazily, as the walk reaches them, so a big file's
    nodes are never all in memory (a 10,000-tunnel file's tree is ~110 MB; freed memory stays
    in the daemon's RSS). Anything else returns None for the Python composer: an alias (only
    that composer records where it is used), a syntax error (its messages are the ones
    operators see), several documents. libyaml refuses nesting deeper than 1,000 itself."""
    loader_class = getattr(yaml, "CSafeLoader", None)
    if loader_class is None:
        return None
    composer = _LazyComposer(loader_class(text))
    try:
        root = composer.start()
        try:
            doc = _walk(_Walker({}), root, name)
        except ConfigError:
            composer.rest()  # a syntax error further on is reported instead, as the slow path
            raise
        composer.finish()
        return doc
    except (_Fallback, yaml.YAMLError, RecursionError):
        return None
    finally:
        composer.loader.dispose()


class _LazyComposer:
    """Nodes from libyaml's events, a collection's items composed as they are iterated (a
    generator as ``node.value``). The walk visits each node once, in order; what it skips (a
    collection used as a key, a value under a refused tag) is consumed before the next."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def start(self) -> yaml.Node | None:
        self.loader.get_event()  # stream start
        if self.loader.check_event(yaml.StreamEndEvent):
            return None
        self.loader.get_event()  # document start
        return self.node()

    def finish(self) -> None:
        if self.loader.check_event(yaml.StreamEndEvent):
            return  # an empty stream
        self.loader.get_event()  # document end
        if not self.loader.check_event(yaml.StreamEndEvent):
            raise _Fallback("more than one document")

    def rest(self) -> None:
        """Read the remaining events (a syntax error raises; a second document falls back)."""
        while not self.loader.check_event(yaml.StreamEndEvent):
            if isinstance(self.loader.get_event(), yaml.DocumentStartEvent):
                raise _Fallback("more than one document")

    def node(self) -> yaml.Node:
        loader = self.loader
        if loader.check_event(yaml.AliasEvent):
            raise _Fallback("an alias")
        event = loader.get_event()
        tag = event.tag
        mark: Any = event.start_mark  # libyaml's Mark: line and column, as the walk needs
        if isinstance(event, yaml.ScalarEvent):
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            return yaml.ScalarNode(tag, event.value, mark, mark, style=event.style)
        kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) \
            else yaml.MappingNode
        if tag is None or tag == "!":
            tag = loader.resolve(kind, None, event.implicit)
        node = kind(tag, [], mark, mark, flow_style=event.flow_style)
        node.value = self._items() if kind is yaml.SequenceNode else self._pairs()
        return node

    def _items(self) -> Iterator[yaml.Node]:
        while not self.loader.check_event(yaml.SequenceEndEvent):
            item = self.node()
            yield item
            _drain(item)
        self.loader.get_event()

    def _pairs(self) -> Iterator[tuple[yaml.Node, yaml.Node]]:
        while not self.loader.check_event(yaml.MappingEndEvent):
            key = self.node()
            _drain(key)  # a collection as a key is reported, never walked
            value = self.node()
            yield key, value
            _drain(value)
        self.loader.get_event()


def _drain(node: yaml.Node) -> None:
    """Consume what the walk left of ``node`` (each item drains its own when resumed)."""
    if isinstance(node.value, GeneratorType):
        for _ in node.value:
            pass


_Aliases = dict[tuple[int, object], tuple[yaml.Mark, str]]


def _compose(text: str, name: str) -> tuple[yaml.Node | None, _Aliases]:
    composer = _Composer(text)
    try:
        return composer.get_single_node(), composer.aliases
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, name) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", 0, f"YAML error: {redact(str(exc))}", "")], name) from None
    except RecursionError:
        # PyYAML composes recursively: a few hundred unclosed '[' exhaust the stack.
        raise ConfigError([Problem("", composer.get_mark().line + 1,
                                   f"lists or mappings are nested more than {MAX_DEPTH} deep",
                                   "a configuration needs a handful of levels")], name) from None
    finally:
        composer.dispose()


def read_yaml(path: Path) -> Document:
    """Read and parse the file at ``path``; an unreadable file is a :class:`ConfigError` too."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ConfigError(
                [Problem("", 0, f"configuration file {path} is larger than "
                         f"{MAX_BYTES >> 20} MiB", "check that this is the configuration file")],
                str(path))
        text = data.decode("utf-8")
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
