"""Read an exposition back with prometheus_client's own parser, as the tests' single reader.

The parser is the one Prometheus tooling in Python uses; a line it cannot read raises here.
Counter families are named without ``_total`` by the parser (``qkd_gateway_rekeys``), their
samples keep it (``qkd_gateway_rekeys_total``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass
class Exposition:
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    @property
    def sample_names(self) -> set[str]:
        return {name for name, _ in self.samples}


def parse(text: str) -> Exposition:
    assert text.endswith("\n"), "exposition must end with a newline"
    exp = Exposition()
    for family in text_string_to_metric_families(text):
        assert family.name not in exp.types, f"family {family.name} twice"
        exp.types[family.name] = family.type
        exp.helps[family.name] = family.documentation
        names = exp.labels.setdefault(family.name, set())
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in exp.samples, f"duplicate series {key}"
            exp.samples[key] = s.value
            names.update(k for k in s.labels if k != "le")
    return exp
