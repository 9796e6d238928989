"""Telemetry: structured logs with redaction, MQTT events/alarms, Prometheus metrics, sd_notify."""

from gateway.telemetry.bus import TelemetryBus
from gateway.telemetry.catalog import GatewayMetrics
from gateway.telemetry.errors import (
    MetricsError,
    MetricsServerError,
    TelemetryError,
    TelemetryNameError,
    TelemetrySettingsError,
)
from gateway.telemetry.logging import LogFormat, configure_logging
from gateway.telemetry.metrics import Counter, Gauge, Histogram, Registry
from gateway.telemetry.metrics_http import DEFAULT_METRICS_PORT, MetricsServer
from gateway.telemetry.mqtt import MqttPublisher, MqttSettings
from gateway.telemetry.sdnotify import SdNotifier, watchdog_interval

__all__ = [
    "DEFAULT_METRICS_PORT",
    "Counter",
    "GatewayMetrics",
    "Gauge",
    "Histogram",
    "LogFormat",
    "MetricsError",
    "MetricsServer",
    "MetricsServerError",
    "MqttPublisher",
    "MqttSettings",
    "Registry",
    "SdNotifier",
    "TelemetryBus",
    "TelemetryError",
    "TelemetryNameError",
    "TelemetrySettingsError",
    "configure_logging",
    "watchdog_interval",
]
