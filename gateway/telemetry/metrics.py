"""A tiny metrics registry rendered in the Prometheus text exposition format 0.0.4.

Why not ``prometheus_client``: the gateway needs a handful of counters, gauges and one histogram,
all updated from a single asyncio thread; forty lines of exposition code are easier to audit on
a security appliance than another dependency. The format rules followed here:

* ``# HELP`` text escapes ``\\`` and newline; label values escape ``\\``, ``"`` and newline;
* metric names match ``[a-zA-Z_:][a-zA-Z0-9_:]*``, label names ``[a-zA-Z_][a-zA-Z0-9_]*`` and
  must not start with ``__`` (reserved by Prometheus);
* histograms expose cumulative ``_bucket{le="..."}`` series ending in ``+Inf``, then ``_sum`` and
  ``_count``; values are Go-style floats (``+Inf``, ``-Inf``, ``NaN``).

Label values must be text: a Secret or raw bytes as a label value is refused (fail closed) instead
of being turned into a series name that every scraper would then store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

from gateway.telemetry.errors import MetricsError

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_LATENCY_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Rekey latency spans a local KMS round trip (~1 ms) to a slow remote KME plus the peer exchange
# (seconds); the buckets cover that range roughly logarithmically.
DEFAULT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelKey = tuple[str, ...]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without ``.0``, Go spellings of inf/nan."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Metric:
    kind: ClassVar[str]

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise MetricsError(f"metric name {name!r} must match [a-zA-Z_:][a-zA-Z0-9_:]*")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise MetricsError(
                    f"label name {label!r} of {name} must match [a-zA-Z_][a-zA-Z0-9_]* "
                    "and not start with '__'"
                )
        if len(set(labelnames)) != len(labelnames):
            raise MetricsError(f"metric {name} repeats a label name: {list(labelnames)}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)

    def _key(self, labels: dict[str, object]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise MetricsError(
                f"metric {self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}"
            )
        values = []
        for label in self.labelnames:
            value = labels[label]
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise MetricsError(
                    f"label {label} of {self.name} must be text, got {type(value).__name__}"
                )
            values.append(str(value))
        return tuple(values)

    def _series(self, key: LabelKey, extra: Iterable[tuple[str, str]] = ()) -> str:
        pairs = [*zip(self.labelnames, key, strict=True), *extra]
        if not pairs:
            return ""
        inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
        return "{" + inner + "}"

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(_Metric):
    """A monotonically increasing count; the name should end in ``_total``."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise MetricsError(f"counter {self.name} cannot decrease (inc by {amount})")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: object) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        return [
            f"{self.name}{self._series(key)} {format_value(v)}"
            for key, v in sorted(self._values.items())
        ]


class Gauge(_Metric):
    """A value that goes up and down; label sets can be removed when their object goes away."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelKey, float] = {}

    def set(self, value: float, **labels: object) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def remove(self, **labels: object) -> None:
        self._values.pop(self._key(labels), None)

    def value(self, **labels: object) -> float | None:
        return self._values.get(self._key(labels))

    def samples(self) -> list[str]:
        return [
            f"{self.name}{self._series(key)} {format_value(v)}"
            for key, v in sorted(self._values.items())
        ]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        if "le" in labelnames:
            raise MetricsError(f"histogram {name} cannot use 'le' as a label: it is reserved")
        super().__init__(name, help, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise MetricsError(f"histogram {name} needs distinct finite bucket bounds")
        self.buckets = (*bounds, math.inf)
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        counts = self._counts.setdefault(key, [0] * len(self.buckets))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break
        self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: object) -> int:
        return sum(self._counts.get(self._key(labels), []))

    def samples(self) -> list[str]:
        lines = []
        for key, counts in sorted(self._counts.items()):
            cumulative = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                cumulative += n
                series = self._series(key, [("le", format_value(bound))])
                lines.append(f"{self.name}_bucket{series} {cumulative}")
            lines.append(f"{self.name}_sum{self._series(key)} {format_value(self._sums[key])}")
            lines.append(f"{self.name}_count{self._series(key)} {cumulative}")
        return lines


class Registry:
    """The set of metric families one ``/metrics`` endpoint exposes."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collect_hooks: list[Callable[[], None]] = []

    def _add(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise MetricsError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets)
        self._add(metric)
        return metric

    def on_collect(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before every render, for values computed at scrape time (ages)."""
        self._collect_hooks.append(hook)

    def render(self) -> str:
        for hook in self._collect_hooks:
            hook()
        return "".join(metric.render() for _, metric in sorted(self._metrics.items()))
