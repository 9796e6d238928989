"""One call, three sinks: :meth:`TelemetryBus.emit` logs an event, counts it and publishes it.

The daemon holds one bus and never talks to structlog, MQTT and the metrics registry
separately for events, so the three views of "what happened" cannot drift apart. Each sink is
optional (MQTT is off unless configured); every call is synchronous and non-blocking.
"""

from __future__ import annotations

from typing import Any, Literal

import structlog

from gateway.telemetry.catalog import GatewayMetrics
from gateway.telemetry.mqtt import MqttPublisher, check_name

__all__ = ["Level", "TelemetryBus"]

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

    def emit(self, event: str, level: Level = "info", **fields: Any) -> None:
        """Log ``event`` at ``level`` with ``fields``, count it, publish it to MQTT.

        Raises:
            TelemetryNameError: ``event`` is not snake_case (a bug, caught in tests).
        """
        check_name("event", event)
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
        check_name("alarm", name)
        if subject is None:
            found = fields.get("tunnel") or fields.get("peer")
            subject = found if isinstance(found, str) else None
        key = (name, subject)
        previous = self._alarms.get(key)
        changed = previous is None or previous != active
        self._alarms[key] = active
        if changed and active:
            self._log.warning("alarm_raised", alarm=name, subject=subject, **fields)
        elif changed and previous:
            self._log.info("alarm_cleared", alarm=name, subject=subject, **fields)
        if self.metrics is not None:
            count = sum(1 for (n, _), on in self._alarms.items() if n == name and on)
            self.metrics.alarms.set(count, alarm=name)
        if self.mqtt is not None and changed:
            self.mqtt.set_alarm(name, active, subject, **fields)
        return changed

    @property
    def active_alarms(self) -> list[str]:
        """Active alarms as ``name`` or ``name/subject``."""
        return sorted(n if s is None else f"{n}/{s}" for (n, s), on in self._alarms.items() if on)
