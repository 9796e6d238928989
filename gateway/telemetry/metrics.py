"""Metric families on ``prometheus_client``, with the gateway's label checks in front of it.

``prometheus_client`` owns storage and the exposition formats (Prometheus text 0.0.4 and
OpenMetrics, negotiated per scrape); it is maintained upstream and brings the ``process_*``
metrics operators expect (RSS, open fds, CPU seconds, start time). What this module adds:

* one private :class:`prometheus_client.CollectorRegistry` per :class:`Registry` (never the
  library's global one), so tests and embedded uses can create as many as they like;
* metric and label names checked against the classic Prometheus rules
  (``[a-zA-Z_:][a-zA-Z0-9_:]*``, label names not starting with ``__``) whatever the library
  version would accept;
* label values checked before they become a series: they must be text (``str`` or ``int``,
  never bytes or a Secret), printable, and must not look like key material
  (:func:`~gateway.telemetry.redact.looks_like_key_material`). A refused value raises
  :class:`~gateway.telemetry.errors.MetricsError` instead of becoming a series name that every
  scraper would then store for months.

Each distinct label set is checked once and its child kept, so an update of a known series costs
a dict lookup (cheap with 10,000 tunnels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import prometheus_client as prom
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gateway.telemetry.errors import MetricsError
from gateway.telemetry.redact import looks_like_key_material, scrub_text

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_LATENCY_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "check_label_value",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Rekey latency spans a local KMS round trip (~1 ms) to a slow remote KME plus the peer exchange
# (seconds); the buckets cover that range roughly logarithmically.
DEFAULT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# A label value is a name (tunnel, KMS, alarm, result); longer than this is a bug or an attack.
_MAX_LABEL_VALUE = 128
# Bytes or characters written as escapes (Python repr "\xa0", JSON "\u00a0"): names have none.
_ESCAPED_BYTES = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})")

LabelKey = tuple[str, ...]


def check_label_value(metric: str, label: str, value: object) -> str:
    """``value`` as label text, or :class:`MetricsError` if it must not become a series."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MetricsError(f"label {label} of {metric} must be text, got {type(value).__name__}")
    text = str(value)
    if len(text) > _MAX_LABEL_VALUE or not (text.isascii() and text.isprintable()):
        raise MetricsError(
            f"label {label} of {metric} must be printable ASCII of at most {_MAX_LABEL_VALUE} "
            "characters (a name); raw bytes decoded to text are refused"
        )
    if looks_like_key_material(text) or _ESCAPED_BYTES.search(text) or scrub_text(text)[1]:
        raise MetricsError(
            f"label {label} of {metric}: value refused, it looks like key material "
            "(long hex or base64); label values must be names"
        )
    return text


class _Family:
    """Common part of the three kinds: name checks and the cache of checked label sets."""

    def __init__(self, name: str, labelnames: Sequence[str]) -> None:
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
        self.labelnames = tuple(labelnames)
        self._metric: Any = None
        self._children: dict[LabelKey, Any] = {}

    def _key(self, labels: dict[str, object]) -> LabelKey:
        if len(labels) != len(self.labelnames) or set(labels) != set(self.labelnames):
            raise MetricsError(
                f"metric {self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}"
            )
        return tuple(check_label_value(self.name, n, labels[n]) for n in self.labelnames)

    def _child(self, labels: dict[str, object]) -> Any:
        if not self.labelnames:
            if labels:
                self._key(labels)  # raises: names the expected labels
            return self._metric
        raw = tuple(labels.get(n) for n in self.labelnames)
        try:
            child = self._children.get(raw)  # type: ignore[arg-type]
        except TypeError:  # an unhashable value: _key refuses it below
            child = None
        if child is None or len(labels) != len(self.labelnames):
            key = self._key(labels)
            child = self._metric.labels(*key)
            self._children[key] = child
        return child

    def remove(self, **labels: object) -> None:
        """Forget one label set (a removed tunnel); absent sets are ignored."""
        key = self._key(labels)
        if self._children.pop(key, None) is not None:
            self._metric.remove(*key)

    def remove_where(self, label: str, value: str) -> None:
        """Forget every label set whose ``label`` is ``value`` (all series of a removed tunnel)."""
        index = self.labelnames.index(label)
        for key in [k for k in self._children if k[index] == value]:
            del self._children[key]
            self._metric.remove(*key)

    def _sample(self, sample_name: str, labels: dict[str, object]) -> float | None:
        wanted = dict(zip(self.labelnames, self._key(labels), strict=True))
        for family in self._metric.collect():
            for s in family.samples:
                if s.name == sample_name and s.labels == wanted:
                    return float(s.value)
        return None


class Counter(_Family):
    """A monotonically increasing count; the name must end in ``_total``."""

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str], registry: prom.CollectorRegistry
    ) -> None:
        super().__init__(name, labelnames)
        if not name.endswith("_total"):
            raise MetricsError(f"counter name {name!r} must end in _total")
        self._metric = prom.Counter(name, help, self.labelnames, registry=registry)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise MetricsError(f"counter {self.name} cannot decrease (inc by {amount})")
        self._child(labels).inc(amount)

    def value(self, **labels: object) -> float:
        """The current count (reads the exposition; for tests and status, not hot paths)."""
        return self._sample(self.name, labels) or 0.0


class Gauge(_Family):
    """A value that goes up and down; label sets can be removed when their object goes away."""

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str], registry: prom.CollectorRegistry
    ) -> None:
        super().__init__(name, labelnames)
        self._metric = prom.Gauge(name, help, self.labelnames, registry=registry)

    def set(self, value: float, **labels: object) -> None:
        self._child(labels).set(float(value))

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        self._child(labels).inc(amount)

    def value(self, **labels: object) -> float | None:
        if self.labelnames and self._key(labels) not in self._children:
            return None
        return self._sample(self.name, labels)


class Histogram(_Family):
    """Observations counted into cumulative buckets, with their sum and count."""

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str],
        registry: prom.CollectorRegistry,
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        if "le" in labelnames:
            raise MetricsError(f"histogram {name} cannot use 'le' as a label: it is reserved")
        super().__init__(name, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise MetricsError(f"histogram {name} needs distinct finite bucket bounds")
        self.buckets = (*bounds, math.inf)
        self._metric = prom.Histogram(
            name, help, self.labelnames, registry=registry, buckets=self.buckets
        )

    def observe(self, value: float, **labels: object) -> None:
        self._child(labels).observe(value)

    def count(self, **labels: object) -> int:
        return int(self._sample(f"{self.name}_count", labels) or 0)


class Registry:
    """The metric families one ``/metrics`` endpoint exposes, in a private CollectorRegistry.

    Args:
        process: also export the ``process_*`` (RSS, CPU seconds, open fds, start time...) and
            ``python_*`` (interpreter version, garbage collector) metrics of this process.
    """

    def __init__(self, process: bool = False) -> None:
        # ``<name>_created`` series (a counter's creation time) would double the series count
        # of every labelled counter for no dashboard's use. The switch is process-wide in
        # prometheus_client; the gateway is its only user in the process.
        prom.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.collectors = prom.CollectorRegistry(auto_describe=True)
        self._names: set[str] = set()
        if process:
            prom.ProcessCollector(registry=self.collectors)
            prom.PlatformCollector(registry=self.collectors)
            prom.GCCollector(registry=self.collectors)

    def _claim(self, name: str) -> None:
        base = name.removesuffix("_total")
        if name in self._names or base in self._names:
            raise MetricsError(f"metric {name} is already registered")
        self._names.update({name, base})

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        self._claim(name)
        return Counter(name, help, labelnames, self.collectors)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        self._claim(name)
        return Gauge(name, help, labelnames, self.collectors)

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> Histogram:
        self._claim(name)
        return Histogram(name, help, labelnames, self.collectors, buckets)

    def register(self, collector: Collector, names: Iterable[str]) -> None:
        """Add a custom collector (values computed at scrape time) exposing ``names``."""
        for name in names:
            self._claim(name)
        self.collectors.register(collector)

    def render(self) -> str:
        """The Prometheus text format 0.0.4, as ``prometheus_client`` writes it."""
        return generate_latest(self.collectors).decode()
