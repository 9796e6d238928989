"""An independent, strict parser of the Prometheus text format 0.0.4 for the tests.

Written as a character-level scanner (the code under test builds lines with string joins), so a
shared misunderstanding of escaping would have to be made twice in two different ways.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Labels = frozenset[tuple[str, str]]


@dataclass
class Exposition:
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]


def _unescape(text: str, allowed: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1]
            if nxt not in allowed:
                raise ValueError(f"bad escape \\{nxt} in {text!r}")
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_labels(text: str, i: int) -> tuple[Labels, int]:
    labels: list[tuple[str, str]] = []
    assert text[i] == "{"
    i += 1
    while text[i] != "}":
        j = text.index("=", i)
        name = text[i:j]
        assert name.isidentifier(), name
        assert text[j + 1] == '"', text
        k, raw = j + 2, []
        while text[k] != '"':
            if text[k] == "\\":
                raw.append(text[k : k + 2])
                k += 2
            else:
                assert text[k] != "\n"
                raw.append(text[k])
                k += 1
        labels.append((name, _unescape("".join(raw), '\\"n')))
        i = k + 1
        if text[i] == ",":
            i += 1
    return frozenset(labels), i + 1


def _value(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


def parse(text: str) -> Exposition:
    assert text.endswith("\n"), "exposition must end with a newline"
    exp = Exposition()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            exp.helps[name] = _unescape(doc, "\\n")
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), kind
            assert name not in exp.types, f"TYPE twice for {name}"
            exp.types[name] = kind
        else:
            end = 0
            while end < len(line) and line[end] not in "{ ":
                end += 1
            name = line[:end]
            labels: Labels = frozenset()
            if line[end] == "{":
                labels, end = _parse_labels(line, end)
            assert line[end] == " ", line
            family = name
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in exp.types:
                    family = name[: -len(suffix)]
            assert family in exp.types, f"sample {name} before its TYPE line"
            key = (name, labels)
            assert key not in exp.samples, f"duplicate series {key}"
            exp.samples[key] = _value(line[end + 1 :])
    return exp
