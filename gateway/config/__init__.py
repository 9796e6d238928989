"""Configuration: one YAML file, validated into frozen pydantic models.

``load_config(path)`` returns a :class:`GatewayConfig` or raises :class:`ConfigError` whose
``problems`` list every problem with its YAML path, line and fix. This package imports nothing
else from the project (stdlib, pydantic and PyYAML only), so any layer may depend on it.
Reference of every key: docs/config.md.
"""

from gateway.config.durations import format_duration, parse_duration
from gateway.config.errors import ConfigError, Problem
from gateway.config.fields import Endpoint
from gateway.config.load import load_config
from gateway.config.models import (
    DEFAULT_LISTEN_PORT,
    GatewayConfig,
    Identity,
    Kms,
    KmsPool,
    KmsTimeouts,
    Listen,
    LogSettings,
    MetricsSettings,
    MqttSettings,
    Peer,
    PublicKeys,
    Site,
    SkipSettings,
    Telemetry,
)
from gateway.config.sources import GeneratedKey, SecretSource
from gateway.config.tunnels import EspLifetime, Policy, Tunnel, WireGuardSettings, XfrmSettings

__all__ = [
    "DEFAULT_LISTEN_PORT",
    "ConfigError",
    "Endpoint",
    "EspLifetime",
    "GatewayConfig",
    "GeneratedKey",
    "Identity",
    "Kms",
    "KmsPool",
    "KmsTimeouts",
    "Listen",
    "LogSettings",
    "MetricsSettings",
    "MqttSettings",
    "Peer",
    "Policy",
    "Problem",
    "PublicKeys",
    "SecretSource",
    "Site",
    "SkipSettings",
    "Telemetry",
    "Tunnel",
    "WireGuardSettings",
    "XfrmSettings",
    "format_duration",
    "load_config",
    "parse_duration",
]
