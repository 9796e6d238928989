"""The gateway's metric families: every name, label and help text in one place.

Operators build dashboards and alerts on these names; renaming one is a breaking change, so
they are defined here once and documented in docs/operations.md ("Metrics").
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway import __version__
from gateway.telemetry.metrics import Registry

__all__ = ["PREFIX", "GatewayMetrics"]

PREFIX = "qkd_gateway"


class GatewayMetrics:
    """Typed update methods over a :class:`Registry`; the daemon calls these, never raw names.

    Args:
        registry: where the families are registered (a new one when ``None``).
        clock: monotonic seconds; key ages are computed from it at scrape time.
    """

    def __init__(
        self, registry: Registry | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = Registry() if registry is None else registry
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
        self.key_age = r.gauge(
            f"{PREFIX}_tunnel_key_age_seconds",
            "Seconds since the tunnel's current key was installed.",
            ["tunnel"],
        )
        self.alarms = r.gauge(
            f"{PREFIX}_alarms_active", "1 while the named alarm is raised, else 0.", ["alarm"]
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
        r.on_collect(self._update_ages)

    def rekey(self, tunnel: str, result: str, duration_s: float | None = None) -> None:
        """Count a rekey attempt; a successful one also resets the tunnel's key age."""
        self.rekeys.inc(tunnel=tunnel, result=result)
        if duration_s is not None:
            self.rekey_duration.observe(duration_s)
        if result == "ok":
            self.key_installed(tunnel)

    def key_installed(self, tunnel: str, at: float | None = None) -> None:
        self._installed_at[tunnel] = self._clock() if at is None else at

    def tunnel_removed(self, tunnel: str) -> None:
        self._installed_at.pop(tunnel, None)
        self.key_age.remove(tunnel=tunnel)

    def set_key_pool(self, kms: str, keys: int) -> None:
        self.key_pool.set(keys, kms=kms)

    def add_keys_wasted(self, kms: str, count: int = 1) -> None:
        self.keys_wasted.inc(count, kms=kms)

    def set_alarm(self, alarm: str, active: bool) -> None:
        self.alarms.set(1 if active else 0, alarm=alarm)

    def count_event(self, event: str) -> None:
        self.events.inc(event=event)

    def _update_ages(self) -> None:
        now = self._clock()
        for tunnel, at in self._installed_at.items():
            self.key_age.set(max(0.0, now - at), tunnel=tunnel)
