"""One call, three sinks: :meth:`TelemetryBus.emit` logs an event, counts it and publishes it.

:meth:`TelemetryBus.tunnel_status` does the same for per-tunnel state: gauges for the numbers and
a retained MQTT message for a dashboard that starts late, published only when something other
than an age counter changed, so calling it for 10,000 tunnels every few seconds stays cheap.

The daemon holds one bus and never talks to structlog, MQTT and the metrics registry
separately for events, so the three views of "what happened" cannot drift apart. Each sink is
optional (MQTT is off unless configured); every call is synchronous and non-blocking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import structlog

from gateway.telemetry.catalog import GatewayMetrics
from gateway.telemetry.mqtt import MqttPublisher
from gateway.telemetry.mqtt_settings import check_name, check_subject
from gateway.telemetry.redact import Redaction, to_safe

__all__ = ["VOLATILE_STATUS_KEYS", "Level", "TelemetryBus"]

# Status fields that move while nothing happens to the tunnel: they are published with the
# status but never cause a publish. A countdown would make every status "changed" every second;
# the KMS's stock (one figure shared by every tunnel on that QKD link, polled every 30 s) would
# republish every tunnel of a busy link at every reconciliation pass (10,000 retained messages
# per pass at 10,000 tunnels). Its gauge stays current; its crossing of low_stock is the
# tunnel's own ``low_stock`` field and the ``kms_low_stock`` alarm.
VOLATILE_STATUS_KEYS = frozenset(
    {"key_age_s", "expires_in_s", "next_rekey_in_s", "next_rekey_s", "uptime_s", "ts",
     "kms_stock"}
)

_PLAIN = (str, int, float, bool)

Level = Literal["debug", "info", "warning", "error", "critical"]


class TelemetryBus:
    """Fan events and alarms out to the log, MQTT and metrics.

    Args:
        metrics: counters to update (``events_total``, ``alarms_active``); ``None`` for none.
        mqtt: the publisher when MQTT is configured, else ``None``.
        logger: the structlog logger to use (bound context is kept); ``gateway.events`` if None.
    """

    def __init__(
        self,
        metrics: GatewayMetrics | None = None,
        mqtt: MqttPublisher | None = None,
        logger: Any = None,
    ) -> None:
        self.metrics = metrics
        self.mqtt = mqtt
        self._log = structlog.get_logger("gateway.events") if logger is None else logger
        self._alarms: dict[tuple[str, str | None], bool] = {}
        # Subjects raised per alarm name: the gauge without a pass over every alarm (start-up
        # raises one per tunnel: 10,000 passes over up to 10,000 alarms).
        self._raised: dict[str, int] = {}
        self._names: set[str] = set()  # event and alarm names already checked
        # The last published status of each tunnel, without its volatile keys.
        self._tunnel_seen: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {}
        self._key_sets: dict[tuple[str, ...], tuple[str, ...]] = {}

    def emit(self, event: str, level: Level = "info", **fields: Any) -> None:
        """Log ``event`` at ``level`` with ``fields``, count it, publish it to MQTT.

        Raises:
            TelemetryNameError: ``event`` is not snake_case (a bug, caught in tests).
        """
        if event not in self._names:
            check_name("event", event)
            self._names.add(event)
        getattr(self._log, level)(event, **fields)
        if self.metrics is not None:
            self.metrics.count_event(event)
        if self.mqtt is not None:
            self.mqtt.publish_event(event, **fields)

    def alarm(self, name: str, active: bool, subject: str | None = None, **fields: Any) -> bool:
        """Raise or clear alarm ``name`` for ``subject``; returns whether its state changed.

        ``subject`` is what the alarm is about; when not given it is taken from the ``tunnel``
        field, else the ``peer`` field, so ``alarm("key_expired", True, tunnel="wg-a")`` and
        ``alarm("key_expired", False, tunnel="wg-a")`` pair up and leave ``wg-b`` alone.

        Only changes are logged (``alarm_raised`` as a warning, ``alarm_cleared`` as info, the
        latter only after a raise) and published, so a condition re-checked every second does
        not flood the journal or the broker; the first call always publishes, so subscribers
        learn that a clear alarm exists. ``qkd_gateway_alarms_active{alarm}`` counts the
        subjects for which the alarm is raised.
        """
        if name not in self._names:
            check_name("alarm", name)
            self._names.add(name)
        if subject is None:
            found = fields.get("tunnel") or fields.get("peer")
            subject = found if isinstance(found, str) else None
        key = (name, subject)
        previous = self._alarms.get(key)
        changed = previous is None or previous != active
        self._alarms[key] = active
        if active != bool(previous):
            self._raised[name] = self._raised.get(name, 0) + (1 if active else -1)
        if changed and active:
            self._log.warning("alarm_raised", alarm=name, subject=subject, **fields)
        elif changed and previous:
            self._log.info("alarm_cleared", alarm=name, subject=subject, **fields)
        if self.metrics is not None:
            self.metrics.alarms.set(self._raised.get(name, 0), alarm=name)
        if self.mqtt is not None and changed:
            self.mqtt.set_alarm(name, active, subject, **fields)
        return changed

    def tunnel_status(self, tunnel: str, status: Mapping[str, Any]) -> bool:
        """Report one tunnel's status; returns whether it was published (it changed).

        ``status`` is whatever the daemon knows; these keys are also mirrored as gauges
        (:meth:`GatewayMetrics.tunnel_status`): ``state`` (``"up"``, ``"failed_closed"``,
        ``"starting"``...), ``epoch``, ``activated_at`` and ``next_rekey_at`` (Unix times),
        ``kms_stock``. The retained JSON on ``<prefix>/<site>/tunnel/<tunnel>/status`` carries
        every key, after the same redaction as events (a Secret or raw bytes never leave), and
        is published only when a key outside :data:`VOLATILE_STATUS_KEYS` changed.

        Raises:
            TelemetryNameError: ``tunnel`` cannot be a topic level (a bug, caught in tests).
        """
        check_subject("tunnel", tunnel)
        if self.metrics is not None:
            self.metrics.tunnel_status(tunnel, status)
        # A snapshot: plain values as they are, containers as JSON-safe copies (a list the
        # caller mutates later must still compare as changed).
        # Kept per tunnel as (keys, values): the key tuple is shared by every tunnel reporting
        # the same keys (a dict per tunnel took ~650 bytes, 6.5 MB at 10,000 tunnels).
        keys = tuple(k for k in status if k not in VOLATILE_STATUS_KEYS)
        keys = self._key_sets.setdefault(keys, keys)
        stable = (keys, tuple(
            v if v is None or type(v) in _PLAIN else to_safe(v, Redaction())
            for v in (status[k] for k in keys)
        ))
        if self._tunnel_seen.get(tunnel) == stable:
            return False
        self._tunnel_seen[tunnel] = stable
        if self.mqtt is not None:
            self.mqtt.set_tunnel_status(tunnel, status)
        return True

    def tunnel_removed(self, tunnel: str) -> None:
        """A tunnel left the configuration: drop its series, delete its retained status and
        clear the alarms raised for it (a tunnel that no longer exists has no alarm)."""
        check_subject("tunnel", tunnel)
        self._tunnel_seen.pop(tunnel, None)
        for name, subject in [k for k, on in self._alarms.items() if on and k[1] == tunnel]:
            self.alarm(name, False, subject=subject, reason="tunnel_removed")
        for key in [k for k in self._alarms if k[1] == tunnel]:
            del self._alarms[key]  # all cleared above: the raised counts stay right
        if self.metrics is not None:
            self.metrics.tunnel_removed(tunnel)
        if self.mqtt is not None:
            self.mqtt.clear_tunnel_status(tunnel)

    @property
    def active_alarms(self) -> list[str]:
        """Active alarms as ``name`` or ``name/subject``."""
        return sorted(n if s is None else f"{n}/{s}" for (n, s), on in self._alarms.items() if on)
