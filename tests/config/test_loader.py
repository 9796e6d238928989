"""YAML parsing keeps the line of every key and list item, and reports what PyYAML hides."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.config.loader import parse_yaml, read_yaml

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


def _messages(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_yaml(text)
    return [str(p) for p in err.value.problems]


def test_bad_values_and_unknown_tags_are_all_reported_at_their_lines() -> None:
    text = ("a: !!int 12x\n"
            "b:\n"
            "  - !!bool maybe\n"
            "  - !custom {k: v}\n"
            "c: !!set {x, y}\n"
            "d: !!binary 'A'\n"
            "e: 2024-13-45\n"
            "f: !!str fine\n")
    fix = "put it in quotes and remove any !! tag"
    tag_fix = "remove the tag and write plain text, numbers, lists or mappings"
    assert _messages(text) == [
        f"a (line 1, column 4): cannot be read as a whole number (!!int); {fix}",
        f"b[0] (line 3, column 5): cannot be read as true or false (!!bool); {fix}",
        f"b[1] (line 4, column 5): unsupported YAML tag !custom; {tag_fix}",
        f"c (line 5, column 4): unsupported YAML tag !!set; {tag_fix}",
        f"d (line 6, column 4): cannot be read as base64 binary (!!binary); {fix}",
        f"e (line 7, column 4): cannot be read as a date (!!timestamp); {fix}",
    ]


def test_aliases_expand_and_lines_point_at_the_alias() -> None:
    doc = parse_yaml("lan: &lan [10.1.0.0/16]\nx:\n  nets: *lan\n")
    assert doc.data == {"lan": ["10.1.0.0/16"], "x": {"nets": ["10.1.0.0/16"]}}
    assert doc.lines[("x", "nets")] == 3
    # An item reached through an alias is placed where the alias is used, not at the anchor.
    assert doc.line_of(("x", "nets", 0)) == 3


def test_alias_loop_is_refused_deep_inside() -> None:
    assert _messages("a:\n  b: &x\n    c:\n      - 1\n      - *x\n") == [
        "a.b.c[1] (line 5, column 9): alias *x refers to the list or mapping that contains it; "
        "write the values out instead",
    ]


def test_billion_laughs_is_capped() -> None:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    started = time.perf_counter()
    messages = _messages("\n".join(lines) + "\n")
    # Bounded, not exponential (the expansion is 10^10 values): generous for a loaded machine.
    assert time.perf_counter() - started < 60
    assert messages == [
        # l0..l4 expand to 123456 values, each *l4 to 111111 more: the fourth crosses 500000.
        "l5[3] (line 6, column 25): aliases expand the file to more than 500000 values; "
        "write the values out, or use fewer aliases inside aliases",
    ]


@pytest.mark.parametrize("depth", [100, 5000])
def test_deep_nesting_is_a_problem_not_a_recursion_error(depth: int) -> None:
    [message] = _messages("a: " + "[" * depth + "]" * depth + "\n")
    assert message.endswith("lists or mappings are nested more than 32 deep; "
                            "a configuration needs a handful of levels")


def test_oversized_files_are_refused_before_parsing(tmp_path: Path) -> None:
    many = tmp_path / "many.yaml"
    many.write_text("a: [" + ", ".join(["1"] * 500_001) + "]\n")
    assert _messages_of(many) == [
        "a[499998] (line 1, column 1499999): the file holds more than 500000 values; a "
        "configuration needs about 20 per tunnel"]
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 900_000)
    assert _messages_of(huge) == [
        f"file: configuration file {huge} is larger than 8 MiB; check that this is the "
        "configuration file"]


def _messages_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    return [str(p) for p in err.value.problems]


def test_plain_merge_and_value_indicators_are_text() -> None:
    # YAML 1.1 resolves a plain `<<` or `=` to the !!merge / !!value tags; as values they are
    # just text the operator typed (and the field says whether it fits).
    assert parse_yaml("a: <<\nb: =\n").data == {"a": "<<", "b": "="}
