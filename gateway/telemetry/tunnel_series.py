"""The per-tunnel series, kept as plain numbers and turned into samples at scrape time.

A ``prometheus_client`` labelled child is a Python object with its own lock and value holder:
seven families per tunnel made ~2.8 KB per tunnel (28 MB at 10,000 tunnels) for numbers that a
scrape reads every 15 s at most. :class:`TunnelSeries` keeps each tunnel's numbers in one flat
array of doubles and one small dict of rekey counts, and writes the same families (names,
types, labels, help texts: see gateway.telemetry.catalog and docs/operations.md "Metrics")
when scraped:

* ``qkd_gateway_rekeys_total{tunnel,result}`` (counter);
* ``qkd_gateway_tunnel_up``, ``_failed_closed``, ``_epoch``,
  ``_key_installed_timestamp_seconds``, ``_key_age_seconds`` (computed from the install time
  and the clock), ``_next_rekey_timestamp_seconds``, ``_kms_stock_keys`` (gauges, ``{tunnel}``).

A number not known (never set, or set to None) has no sample, as a removed labelled child had
none. Label values pass :func:`~gateway.telemetry.metrics.check_label_value` once, when a tunnel
(or a rekey result) is first seen, so key material never becomes a series.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.telemetry.metrics import check_label_value

__all__ = ["FAMILIES", "TunnelSeries"]

_P = "qkd_gateway"
REKEYS = f"{_P}_rekeys_total"
# Index in a tunnel's row -> (gauge name, help text). The key age (AGE) is derived from
# INSTALLED at scrape time and has no slot of its own.
UP, FAILED_CLOSED, EPOCH, INSTALLED, NEXT_REKEY, KMS_STOCK = range(6)
_GAUGES: tuple[tuple[str, str], ...] = (
    (f"{_P}_tunnel_up", "1 while the tunnel carries traffic under a valid key, else 0."),
    (f"{_P}_tunnel_failed_closed",
     "1 while the tunnel is failed closed (random key installed, traffic stopped)."),
    (f"{_P}_tunnel_epoch", "Key epoch of the tunnel (one more per rekey)."),
    (f"{_P}_tunnel_key_installed_timestamp_seconds",
     "Unix time the tunnel's current key was installed (age = time() - this)."),
    (f"{_P}_tunnel_next_rekey_timestamp_seconds",
     "Unix time of the tunnel's next scheduled rekey."),
    (f"{_P}_tunnel_kms_stock_keys",
     "Keys the KMS reports in stock (stored_key_count) for the tunnel's QKD link."),
)
AGE = f"{_P}_tunnel_key_age_seconds"
_AGE_HELP = "Seconds since the tunnel's current key was installed."
_REKEYS_HELP = "Rekey attempts by tunnel and result (ok, kms_error, peer_error, install_error...)."
#: Every family name this collector exposes (for Registry.register).
FAMILIES = (REKEYS, AGE, *(name for name, _ in _GAUGES))

#: A tunnel's gauges are one array of doubles (112 bytes, no boxed floats), NaN where unknown
#: (no sample).
_UNKNOWN = math.nan


class TunnelSeries(Collector):
    """Per-tunnel numbers and rekey counts; a ``prometheus_client`` collector over them.

    Updates come from the event loop, scrapes from a worker thread: :meth:`collect` copies
    each container before iterating it (a list of items), and every update replaces a number
    in place or inserts a key, never leaving a half-written row.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rows: dict[str, array[float]] = {}
        self._rekeys: dict[str, dict[str, float]] = {}
        self._results: set[str] = set()  # result label values already checked

    def _row(self, tunnel: str) -> array[float]:
        row = self._rows.get(tunnel)
        if row is None:
            check_label_value(_GAUGES[UP][0], "tunnel", tunnel)
            row = self._rows[tunnel] = array("d", [_UNKNOWN] * len(_GAUGES))
        return row

    def set(self, tunnel: str, slot: int, value: float | None) -> None:
        """Set one gauge of ``tunnel`` (``slot``: UP, FAILED_CLOSED, ...); None removes it."""
        if value is None:
            row = self._rows.get(tunnel)
            if row is not None:
                row[slot] = _UNKNOWN
            return
        self._row(tunnel)[slot] = float(value)

    def get(self, tunnel: str, slot: int) -> float | None:
        row = self._rows.get(tunnel)
        value = _UNKNOWN if row is None else row[slot]
        return None if math.isnan(value) else value

    def count_rekey(self, tunnel: str, result: str, amount: float = 1.0) -> None:
        counts = self._rekeys.get(tunnel)
        if counts is None:
            check_label_value(REKEYS, "tunnel", tunnel)
            counts = self._rekeys[tunnel] = {}
        if result not in self._results:
            check_label_value(REKEYS, "result", result)
            self._results.add(result)
        counts[result] = counts.get(result, 0.0) + amount

    def remove(self, tunnel: str) -> None:
        """Forget every series of ``tunnel``."""
        self._rows.pop(tunnel, None)
        self._rekeys.pop(tunnel, None)

    def describe(self) -> Iterator[Metric]:
        """The families without samples (registration checks the names without a scrape)."""
        yield CounterMetricFamily(REKEYS, _REKEYS_HELP, labels=["tunnel", "result"])
        yield GaugeMetricFamily(AGE, _AGE_HELP, labels=["tunnel"])
        for name, help_ in _GAUGES:
            yield GaugeMetricFamily(name, help_, labels=["tunnel"])

    def collect(self) -> Iterator[Metric]:
        rekeys = CounterMetricFamily(REKEYS, _REKEYS_HELP, labels=["tunnel", "result"])
        for tunnel, counts in list(self._rekeys.items()):
            for result, n in list(counts.items()):
                rekeys.add_metric([tunnel, result], n)
        yield rekeys
        gauges = [GaugeMetricFamily(name, help_, labels=["tunnel"]) for name, help_ in _GAUGES]
        age = GaugeMetricFamily(AGE, _AGE_HELP, labels=["tunnel"])
        now = self._clock()
        for tunnel, row in list(self._rows.items()):
            values = tuple(row)
            labels = [tunnel]
            for family, value in zip(gauges, values, strict=True):
                if not math.isnan(value):
                    family.add_metric(labels, value)
            at = values[INSTALLED]
            if not math.isnan(at):
                age.add_metric(labels, max(0.0, now - at))
        yield age
        yield from gauges
