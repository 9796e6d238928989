"""MQTT settings and topic names: what the publisher connects to and how topics are built.

Topic levels come from the configuration (site, prefix) and from code (event, alarm and tunnel
names); all are checked here so no wildcard (``+``, ``#``) or empty level can reach a topic.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.telemetry.errors import TelemetryNameError, TelemetrySettingsError

__all__ = ["MqttSettings", "check_name", "check_subject", "describe_error", "tls_context"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PREFIX_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_subject(kind: str, name: str) -> str:
    """Return ``name`` if it can be a topic level naming a tunnel or peer, else raise."""
    if not isinstance(name, str) or not _SITE.match(name):
        raise TelemetryNameError(
            f"{kind} {name!r} must be a tunnel or peer name "
            "(letters, digits, '.', '_' or '-'): it becomes a topic level"
        )
    return name


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is lower snake_case (it becomes a topic level), else raise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise TelemetryNameError(
            f"{kind} name {name!r} must be lower snake_case ([a-z][a-z0-9_]*, at most 64 chars), "
            "e.g. 'rekey_completed'"
        )
    return name


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to publish.

    Args:
        host: broker host name or address (must match its certificate when TLS is used).
        site: this gateway's site name, the second topic level.
        port: broker port (1883 plain, 8883 TLS by convention).
        topic_prefix: first topic level(s), ``/``-separated, no wildcards.
        client_id: MQTT client id; ``qkd-gateway-<site>`` when ``None``.
        use_tls: TLS with the system CA store (implied by ``tls_ca`` or a client certificate).
        tls_ca: CA bundle to verify the broker; setting it (or a client cert) enables TLS.
        tls_cert / tls_key: client certificate and key for mutual TLS (both or neither).
        keepalive_s: MQTT keepalive; a silent broker is detected after ~1.5x this.
        queue_size: events held while disconnected before the oldest are dropped.
        connect_timeout_s / publish_timeout_s: bounds on each network wait.
        stale_status_grace_s: a retained tunnel status found on the broker for a tunnel this
            gateway has not reported within this time after connecting is deleted (a tunnel
            removed while the gateway was down); long enough for the daemon to start its tunnels.
        backoff_initial_s / backoff_max_s: reconnect delay doubles from initial up to max,
            each delay jittered down to between 50 % and 100 % so a site's gateways that lost
            the same broker do not reconnect in lockstep.
    """

    host: str
    site: str
    port: int = 1883
    topic_prefix: str = "qkd-gateway"
    client_id: str | None = None
    use_tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = 30
    queue_size: int = 1000
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    stale_status_grace_s: float = 30.0

    def problems(self) -> list[str]:
        """Every problem with these settings, each naming the setting and the fix."""
        out = []
        if not self.host:
            out.append("mqtt.host is empty: set the broker's host name or address")
        if not 1 <= self.port <= 65535:
            out.append(f"mqtt.port {self.port} is not in 1..65535")
        if not _SITE.match(self.site):
            out.append(f"mqtt.site {self.site!r}: use letters, digits, '.', '_' or '-'")
        levels = self.topic_prefix.split("/")
        if not all(_PREFIX_LEVEL.match(level) for level in levels):
            out.append(
                f"mqtt.topic_prefix {self.topic_prefix!r}: use '/'-separated levels of letters, "
                "digits, '.', '_' or '-' (no wildcards, no leading '$' or '/')"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            out.append("mqtt.tls_cert and mqtt.tls_key must be set together (mutual TLS)")
        for label, path in (("tls_ca", self.tls_ca), ("tls_cert", self.tls_cert),
                            ("tls_key", self.tls_key)):  # fmt: skip
            if path is not None and not path.is_file():
                out.append(f"mqtt.{label} {str(path)!r} is not a readable file")
        if self.queue_size < 1:
            out.append(f"mqtt.queue_size {self.queue_size} must be at least 1")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            out.append("mqtt.backoff_initial_s must be > 0 and <= mqtt.backoff_max_s")
        if self.stale_status_grace_s < 0:
            out.append("mqtt.stale_status_grace_s must not be negative")
        if self.connect_timeout_s <= 0 or self.publish_timeout_s <= 0 or self.keepalive_s < 5:
            out.append("mqtt timeouts must be positive and keepalive_s at least 5")
        return out

    @property
    def tls(self) -> bool:
        return self.use_tls or self.tls_ca is not None or self.tls_cert is not None

    @classmethod
    def from_url(cls, url: str, site: str, **options: Any) -> MqttSettings:
        """Settings from the configuration's ``mqtt://host[:port]`` / ``mqtts://host[:port]``.

        The port defaults to 1883 (``mqtt``) or 8883 (``mqtts``); ``options`` are the other
        fields (``topic_prefix``, ``tls_ca``, ``tls_cert``, ``tls_key``, ``keepalive_s``...).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise TelemetrySettingsError(
                f"mqtt.url {url!r} must look like mqtt://host[:port] or mqtts://host[:port]"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise TelemetrySettingsError(f"mqtt.url {url!r}: {exc}") from None
        tls = parts.scheme == "mqtts"
        default_port = 8883 if tls else 1883
        keepalive = options.pop("keepalive_s", cls.keepalive_s)
        return cls(
            host=parts.hostname,
            site=site,
            port=default_port if port is None else port,
            use_tls=tls,
            keepalive_s=max(5, round(keepalive)),
            **options,
        )

    def topic(self, *levels: str) -> str:
        return "/".join((self.topic_prefix, self.site, *levels))


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    ca = str(settings.tls_ca) if settings.tls_ca is not None else None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert is not None and settings.tls_key is not None:
        ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return ctx


def describe_error(exc: BaseException, settings: MqttSettings) -> str:
    if isinstance(exc, TimeoutError):
        # aiomqtt waits for a CONNACK that never comes when the broker drops the connection
        # during the TLS handshake (TLS 1.3 rejects a missing client certificate only then).
        hint = "; the broker may have rejected our TLS client certificate" if settings.tls else ""
        return f"no CONNACK within {settings.connect_timeout_s:g} s{hint}; see the broker's log"
    return str(exc) or type(exc).__name__
