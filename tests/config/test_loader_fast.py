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
        m.setattr(loader, "_fast_compose", lambda _text: (loader._FAILED, {}))
        return parse_yaml(text)


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML built without libyaml")
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_same_data_lines_and_spellings(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text()
    root, _ = loader._fast_compose(text)
    assert root is not loader._FAILED  # the fast path was taken
    fast, slow = parse_yaml(text), _slow(text, monkeypatch)
    assert (fast.data, fast.lines, fast.raw, fast.problems) == \
        (slow.data, slow.lines, slow.raw, slow.problems)


def test_files_with_aliases_take_the_path_that_knows_where_they_are_used() -> None:
    text = "lan: &lan [10.1.0.0/16]\nx:\n  nets: *lan\n  one: &one 5\n  two: *one\n"
    root, _ = loader._fast_compose(text)
    assert root is loader._FAILED
    doc = parse_yaml(text)
    assert doc.lines[("x", "nets")] == 3 and doc.lines[("x", "two")] == 5


def test_duplicate_keys_and_spelled_numbers_on_the_fast_path() -> None:
    doc = parse_yaml("a: 0x10\nb: yes\na: 2\n")
    assert doc.data == {"a": 16, "b": True}
    assert doc.raw == {("a",): "0x10", ("b",): "yes"}
    assert [p.message for p in doc.problems] == ["key 'a' appears twice (first on line 1)"]
