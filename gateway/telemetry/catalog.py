"""The gateway's metric families: every name, label and help text in one place.

Operators build dashboards and alerts on these names; renaming one is a breaking change, so
they are defined here once and documented in docs/operations.md ("Metrics"); the Grafana
dashboard in docs/grafana/ uses them (tests/telemetry/test_dashboard.py keeps both in step).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway import __version__
from gateway.telemetry.metrics import Registry
from gateway.telemetry.tunnel_series import (
    EPOCH,
    FAILED_CLOSED,
    FAMILIES,
    INSTALLED,
    KMS_STOCK,
    NEXT_REKEY,
    UP,
    TunnelSeries,
)

__all__ = ["PREFIX", "GatewayMetrics"]

PREFIX = "qkd_gateway"
# The per-tunnel status keys mirrored as gauges (see GatewayMetrics.tunnel_status).
STATE_UP = "up"
STATE_FAILED_CLOSED = "failed_closed"
_STATUS_GAUGES = (("epoch", EPOCH), ("next_rekey_at", NEXT_REKEY), ("kms_stock", KMS_STOCK))


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
        r = self.registry
        self.info = r.gauge(f"{PREFIX}_info", "Build information; always 1.", ["version"])
        self.info.set(1, version=__version__)
        # Every per-tunnel family (rekeys_total, tunnel_*): numbers, sampled at scrape time.
        self.tunnels = TunnelSeries(clock)
        r.register(self.tunnels, FAMILIES)
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

    def rekey(self, tunnel: str, result: str, duration_s: float | None = None) -> None:
        """Count a rekey attempt; a successful one also resets the tunnel's key age."""
        self.tunnels.count_rekey(tunnel, result)
        if duration_s is not None:
            self.rekey_duration.observe(duration_s)
        if result == "ok":
            self.key_installed(tunnel)

    def key_installed(self, tunnel: str, at: float | None = None) -> None:
        """The tunnel's key was installed at Unix time ``at`` (now when ``None``)."""
        self.tunnels.set(tunnel, INSTALLED, self._clock() if at is None else float(at))

    def tunnel_status(self, tunnel: str, status: Mapping[str, Any]) -> None:
        """Mirror the numbers of a per-tunnel status (see TelemetryBus.tunnel_status) as gauges.

        Understood keys, each optional: ``state`` (``"up"``, ``"failed_closed"``, or another
        word such as ``"starting"``), ``epoch``, ``activated_at`` and ``next_rekey_at`` (Unix
        times), ``kms_stock`` (an int, or None when unknown). Other keys are ignored here.
        """
        state = status.get("state")
        t = self.tunnels
        if isinstance(state, str):
            t.set(tunnel, UP, 1 if state == STATE_UP else 0)
            t.set(tunnel, FAILED_CLOSED, 1 if state == STATE_FAILED_CLOSED else 0)
        for key, slot in _STATUS_GAUGES:
            value = status.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                t.set(tunnel, slot, value)
            elif key in status:  # present but None: unknown now, so no stale number
                t.set(tunnel, slot, None)
        at = status.get("activated_at")
        if isinstance(at, int | float) and not isinstance(at, bool) \
                and t.get(tunnel, INSTALLED) != at:
            self.key_installed(tunnel, at)

    def tunnel_removed(self, tunnel: str) -> None:
        """Forget every series of a tunnel that is no longer configured."""
        self.tunnels.remove(tunnel)

    def set_key_pool(self, kms: str, keys: int) -> None:
        self.key_pool.set(keys, kms=kms)

    def add_keys_wasted(self, kms: str, count: int = 1) -> None:
        self.keys_wasted.inc(count, kms=kms)

    def set_alarm(self, alarm: str, active: bool) -> None:
        self.alarms.set(1 if active else 0, alarm=alarm)

    def count_event(self, event: str) -> None:
        self.events.inc(event=event)
