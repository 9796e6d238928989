"""Telemetry: structured logs with redaction, MQTT events/alarms, Prometheus metrics, sd_notify."""

from gateway.telemetry.logging import LogFormat, configure_logging

__all__ = ["LogFormat", "configure_logging"]
