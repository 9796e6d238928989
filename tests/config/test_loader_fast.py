"""libyaml's composer (the fast path of parse_yaml) reads every file exactly as PyYAML's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import loader
from gateway.config.loader import parse_yaml

pytestmark = pytest.mark.unit

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))


def _slow(text: str, monkeypatch: pytest.MonkeyPatch) -> loader.Document:
    with monkeypatch.context() as m:
        m.setattr(loader, "_fast_parse", lambda _text, _name: None)
        return parse_yaml(text)


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML built without libyaml")
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_same_data_lines_and_spellings(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text()
    fast = loader._fast_parse(text, "x")
    assert fast is not None  # the fast path was taken
    slow = _slow(text, monkeypatch)
    assert (fast.data, fast.lines, fast.raw, fast.problems) == \
        (slow.data, slow.lines, slow.raw, slow.problems)


def test_files_with_aliases_take_the_path_that_knows_where_they_are_used() -> None:
    text = "lan: &lan [10.1.0.0/16]\nx:\n  nets: *lan\n  one: &one 5\n  two: *one\n"
    assert loader._fast_parse(text, "x") is None
    doc = parse_yaml(text)
    assert doc.lines[("x", "nets")] == 3 and doc.lines[("x", "two")] == 5


def test_duplicate_keys_and_spelled_numbers_on_the_fast_path() -> None:
    doc = parse_yaml("a: 0x10\nb: yes\na: 2\n")
    assert doc.data == {"a": 16, "b": True}
    assert doc.raw == {("a",): "0x10", ("b",): "yes"}
    assert [p.message for p in doc.problems] == ["key 'a' appears twice (first on line 1)"]


@pytest.mark.parametrize("text", [
    "",
    "a: 1\n",
    "a: !!int 12\nb: !custom x\n",
    "? [1, 2]\n: v\nafter: 3\n",
    "<<: {a: 1}\nb: 2\n",
    "x: !!map [1, 2]\ny: [a, {b: c}, [d]]\nz: 4\n",
    "a: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",  # unbalanced
    "a: " + "[" * 40 + "]" * 40 + "\n",
    "a: " + "[" * 40 + "]" * 40 + "\n---\nb: 1\n",
    "a: !!int abc\nb: [\n",
    "a: 1\n---\nb: 2\n",
])
def test_odd_files_read_the_same_both_ways(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def outcome(parse: object) -> object:
        try:
            d = parse()  # type: ignore[operator]
        except loader.ConfigError as exc:
            return [str(p) for p in exc.problems]
        return (d.data, d.lines, d.raw, d.problems)

    assert outcome(lambda: parse_yaml(text)) == outcome(lambda: _slow(text, monkeypatch))
