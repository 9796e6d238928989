"""The gateway's metric families: every name, label and help text in one place.

Operators build dashboards and alerts on these names; renaming one is a breaking change, so
they are defined here once and documented in docs/operations.md ("Metrics"); the Grafana
dashboard in docs/grafana/ uses them (tests/telemetry/test_dashboard.py keeps both in step).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.telemetry.metrics import Registry

__all__ = ["PREFIX", "GatewayMetrics"]

PREFIX = "qkd_gateway"
_KEY_AGE = f"{PREFIX}_tunnel_key_age_seconds"
# The per-tunnel status keys mirrored as gauges (see GatewayMetrics.tunnel_status).
STATE_UP = "up"
STATE_FAILED_CLOSED = "failed_closed"


class _KeyAges(Collector):
    """``qkd_gateway_tunnel_key_age_seconds`` computed at scrape time from install times."""

    def __init__(self, installed_at: Mapping[str, float], clock: Callable[[], float]) -> None:
        self._installed_at = installed_at
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            _KEY_AGE, "Seconds since the tunnel's current key was installed.", labels=["tunnel"]
        )
        now = self._clock()
        # A copy: scrapes render in a worker thread while the event loop updates the dict.
        for tunnel, at in list(self._installed_at.items()):
            family.add_metric([tunnel], max(0.0, now - at))
        yield family


class GatewayMetrics:
    """Typed update methods over a :class:`Registry`; the daemon calls these, never raw names.

    Args:
        registry: where the families are registered; a new private one (with the ``process_*``
            and ``python_*`` metrics of this process) when ``None``.
        clock: wall-clock seconds (Unix time); key ages are computed from it at scrape time.
    """

    def __init__(
        self, registry: Registry | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = Registry(process=True) if registry is None else registry
        self._clock = clock
        self._installed_at: dict[str, float] = {}
        r = self.registry
        self.info = r.gauge(f"{PREFIX}_info", "Build information; always 1.", ["version"])
        self.info.set(1, version=__version__)
        self.rekeys = r.counter(
            f"{PREFIX}_rekeys_total",
            "Rekey attempts by tunnel and result (ok, kms_error, peer_error, install_error...).",
            ["tunnel", "result"],
        )
        self.rekey_duration = r.histogram(
            f"{PREFIX}_rekey_duration_seconds",
            "Wall time of a rekey from start to the new key being installed.",
        )
        self.key_pool = r.gauge(
            f"{PREFIX}_key_pool_keys", "QKD keys held in the local pool per KMS.", ["kms"]
        )
        self.keys_wasted = r.counter(
            f"{PREFIX}_keys_wasted_total",
            "QKD keys fetched from a KMS but never used (expired, rejected by the peer).",
            ["kms"],
        )
        r.register(_KeyAges(self._installed_at, clock), [_KEY_AGE])
        self.key_installed_at = r.gauge(
            f"{PREFIX}_tunnel_key_installed_timestamp_seconds",
            "Unix time the tunnel's current key was installed (age = time() - this).",
            ["tunnel"],
        )
        self.tunnel_up = r.gauge(
            f"{PREFIX}_tunnel_up",
            "1 while the tunnel carries traffic under a valid key, else 0.",
            ["tunnel"],
        )
        self.tunnel_failed_closed = r.gauge(
            f"{PREFIX}_tunnel_failed_closed",
            "1 while the tunnel is failed closed (random key installed, traffic stopped).",
            ["tunnel"],
        )
        self.tunnel_epoch = r.gauge(
            f"{PREFIX}_tunnel_epoch", "Key epoch of the tunnel (one more per rekey).", ["tunnel"]
        )
        self.tunnel_next_rekey = r.gauge(
            f"{PREFIX}_tunnel_next_rekey_timestamp_seconds",
            "Unix time of the tunnel's next scheduled rekey.",
            ["tunnel"],
        )
        self.tunnel_kms_stock = r.gauge(
            f"{PREFIX}_tunnel_kms_stock_keys",
            "Keys the KMS reports in stock (stored_key_count) for the tunnel's QKD link.",
            ["tunnel"],
        )
        self.alarms = r.gauge(
            f"{PREFIX}_alarms_active",
            "How many subjects (tunnels, peers) have the named alarm raised; 0 when clear.",
            ["alarm"],
        )
        self.events = r.counter(
            f"{PREFIX}_events_total", "Telemetry events emitted, by event name.", ["event"]
        )
        self.mqtt_dropped = r.counter(
            f"{PREFIX}_mqtt_events_dropped_total",
            "MQTT events dropped because the publish queue was full (alarms are never dropped).",
        )
        self.mqtt_connected = r.gauge(
            f"{PREFIX}_mqtt_connected", "1 while connected to the MQTT broker."
        )
        self._per_tunnel = (
            self.rekeys,
            self.key_installed_at,
            self.tunnel_up,
            self.tunnel_failed_closed,
            self.tunnel_epoch,
            self.tunnel_next_rekey,
            self.tunnel_kms_stock,
        )

    def rekey(self, tunnel: str, result: str, duration_s: float | None = None) -> None:
        """Count a rekey attempt; a successful one also resets the tunnel's key age."""
        self.rekeys.inc(tunnel=tunnel, result=result)
        if duration_s is not None:
            self.rekey_duration.observe(duration_s)
        if result == "ok":
            self.key_installed(tunnel)

    def key_installed(self, tunnel: str, at: float | None = None) -> None:
        """The tunnel's key was installed at Unix time ``at`` (now when ``None``)."""
        when = self._clock() if at is None else float(at)
        self.key_installed_at.set(when, tunnel=tunnel)  # checks the label value first
        self._installed_at[tunnel] = when

    def tunnel_status(self, tunnel: str, status: Mapping[str, Any]) -> None:
        """Mirror the numbers of a per-tunnel status (see TelemetryBus.tunnel_status) as gauges.

        Understood keys, each optional: ``state`` (``"up"``, ``"failed_closed"``, or another
        word such as ``"starting"``), ``epoch``, ``activated_at`` and ``next_rekey_at`` (Unix
        times), ``kms_stock`` (an int, or None when unknown). Other keys are ignored here.
        """
        state = status.get("state")
        if isinstance(state, str):
            self.tunnel_up.set(1 if state == STATE_UP else 0, tunnel=tunnel)
            self.tunnel_failed_closed.set(1 if state == STATE_FAILED_CLOSED else 0, tunnel=tunnel)
        for key, gauge in (("epoch", self.tunnel_epoch), ("next_rekey_at", self.tunnel_next_rekey),
                           ("kms_stock", self.tunnel_kms_stock)):  # fmt: skip
            value = status.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                gauge.set(value, tunnel=tunnel)
            elif key in status:  # present but None: unknown now, so no stale number
                gauge.remove(tunnel=tunnel)
        at = status.get("activated_at")
        if (
            isinstance(at, int | float)
            and not isinstance(at, bool)
            and (self._installed_at.get(tunnel) != at)
        ):
            self.key_installed(tunnel, at)

    def tunnel_removed(self, tunnel: str) -> None:
        """Forget every series of a tunnel that is no longer configured."""
        self._installed_at.pop(tunnel, None)
        for family in self._per_tunnel:
            family.remove_where("tunnel", tunnel)

    def set_key_pool(self, kms: str, keys: int) -> None:
        self.key_pool.set(keys, kms=kms)

    def add_keys_wasted(self, kms: str, count: int = 1) -> None:
        self.keys_wasted.inc(count, kms=kms)

    def set_alarm(self, alarm: str, active: bool) -> None:
        self.alarms.set(1 if active else 0, alarm=alarm)

    def count_event(self, event: str) -> None:
        self.events.inc(event=event)
