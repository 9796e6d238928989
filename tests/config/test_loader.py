"""YAML parsing keeps the line of every key and list item, and reports what PyYAML hides."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError
from gateway.config.loader import parse_yaml

pytestmark = pytest.mark.unit

TEXT = """\
# comment
site:
  name: x
tunnels:
  - name: a
    on: yes
  -
    name: b
    allowed_ips: [10.0.0.0/8,
                  10.1.0.0/16]
"""


def test_lines_of_keys_and_items() -> None:
    doc = parse_yaml(TEXT)
    assert doc.data["tunnels"][0] == {"name": "a", "on": True}
    assert doc.lines[("site",)] == 2
    assert doc.lines[("site", "name")] == 3
    assert doc.lines[("tunnels", 0)] == 5
    assert doc.lines[("tunnels", 1)] == 8
    assert doc.lines[("tunnels", 1, "allowed_ips", 1)] == 10
    # A key that is missing from the file is placed at the mapping it is missing from.
    assert doc.line_of(("tunnels", 1, "kind")) == 8
    assert doc.problems == []


def test_duplicate_and_merge_keys_are_problems() -> None:
    doc = parse_yaml("a: &x {b: 1}\nc:\n  <<: *x\na: 2\n")
    assert [str(p) for p in doc.problems] == [
        "c (line 3): merge keys (<<) are not supported; write the keys out in full",
        "a (line 4): key 'a' appears twice (first on line 1); remove one of them",
    ]
    assert doc.data == {"a": {"b": 1}, "c": {}}


def test_syntax_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse_yaml("site:\n  name: 'unterminated\n")
    [problem] = err.value.problems
    assert problem.line == 3 and problem.message.startswith("YAML syntax error: while scanning")
