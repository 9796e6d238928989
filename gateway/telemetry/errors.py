"""Exceptions raised by the telemetry package.

::

    TelemetryError                       base class: catch this to catch everything below
     ├── TelemetryNameError (ValueError) an event or alarm name that is not snake_case, or a
     │                                   tunnel/alarm subject that cannot be a topic level
     ├── MetricsError (ValueError)       a metric/label name, label set or value that must not
     │                                   become a series (bytes, a Secret, non-ASCII, or text
     │                                   that looks like key material)
     ├── TelemetrySettingsError          MQTT / metrics settings unusable at start-up: a topic
     │   (ValueError)                    with wildcards, an unreadable TLS file, a bad port
     └── MetricsServerError (OSError)    the /metrics listener could not bind its address

MQTT connection loss is *not* an exception for callers: the publisher reconnects by itself and
reports through logs and the ``mqtt_connected`` state. Telemetry must never stop the daemon.
"""

from __future__ import annotations

__all__ = [
    "MetricsError",
    "MetricsServerError",
    "TelemetryError",
    "TelemetryNameError",
    "TelemetrySettingsError",
]


class TelemetryError(Exception):
    """Base class of the telemetry exceptions."""


class TelemetryNameError(TelemetryError, ValueError):
    """An event or alarm name is not lower snake_case (it becomes an MQTT topic level)."""


class MetricsError(TelemetryError, ValueError):
    """A metric definition or update the exposition format cannot represent."""


class TelemetrySettingsError(TelemetryError, ValueError):
    """Telemetry settings that cannot work; the message names the setting and the fix."""


class MetricsServerError(TelemetryError, OSError):
    """The metrics HTTP listener failed to start."""
