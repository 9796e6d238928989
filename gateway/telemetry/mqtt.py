"""Publish gateway events and alarms to an MQTT broker, without ever blocking the daemon.

Topics (``<prefix>`` defaults to ``qkd-gateway``, ``<site>`` is this gateway's site name)::

    <prefix>/<site>/status               "online" (retained); the broker publishes the
                                         last will "offline" (retained) if we vanish
    <prefix>/<site>/event/<event_name>   JSON, not retained, QoS 1
    <prefix>/<site>/alarm/<alarm_name>[/<subject>]
                                         JSON with "active": true/false, retained, QoS 1;
                                         <subject> is the tunnel or peer the alarm is about

Delivery model: :meth:`MqttPublisher.publish_event` and :meth:`MqttPublisher.set_alarm` only
touch in-memory state and return at once; the :meth:`MqttPublisher.run` task ships it. Events
wait in a bounded queue that drops the *oldest* event when full (counted in :attr:`dropped`).
Alarms are state, not history: the latest state per alarm is kept (so never dropped, and bounded
by the number of alarm names) and *all* of them are republished on every (re)connect, so a broker
that restarted without persistence still shows the current alarms. A message leaves the queue
only after the broker's PUBACK: at-least-once across reconnects.

Payloads pass the same redaction as log lines (:func:`gateway.telemetry.redact.to_safe`): a
Secret appears as its redacted text, raw bytes as ``<bytes redacted>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import re
import ssl
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog

from gateway.telemetry.catalog import GatewayMetrics
from gateway.telemetry.errors import TelemetryNameError, TelemetrySettingsError
from gateway.telemetry.redact import Redaction, to_safe

__all__ = ["MqttPublisher", "MqttSettings", "check_name"]

_log = structlog.get_logger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PREFIX_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The graceful "offline" at shutdown is best effort: a dead broker must not delay the exit.
_GOODBYE_TIMEOUT_S = 2.0


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


def _tls_context(settings: MqttSettings) -> ssl.SSLContext:
    ca = str(settings.tls_ca) if settings.tls_ca is not None else None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert is not None and settings.tls_key is not None:
        ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return ctx


def _describe(exc: BaseException, settings: MqttSettings) -> str:
    if isinstance(exc, TimeoutError):
        # aiomqtt waits for a CONNACK that never comes when the broker drops the connection
        # during the TLS handshake (TLS 1.3 rejects a missing client certificate only then).
        hint = "; the broker may have rejected our TLS client certificate" if settings.tls else ""
        return f"no CONNACK within {settings.connect_timeout_s:g} s{hint}; see the broker's log"
    return str(exc) or type(exc).__name__


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MqttPublisher:
    """Queue events and alarm states; :meth:`run` ships them to the broker and reconnects.

    All methods must be called from the event loop's thread.

    Args:
        settings: broker, topics and limits; checked here, all problems reported at once.
        metrics: optional metric families to keep ``mqtt_connected``/drops up to date.

    Raises:
        TelemetrySettingsError: the settings cannot work (message lists every problem).
    """

    def __init__(self, settings: MqttSettings, metrics: GatewayMetrics | None = None) -> None:
        problems = settings.problems()
        self._tls: ssl.SSLContext | None = None
        if not problems and settings.tls:
            try:
                self._tls = _tls_context(settings)
            except (OSError, ssl.SSLError) as exc:
                problems.append(f"mqtt TLS files cannot be loaded: {exc}; check tls_* paths")
        if problems:
            raise TelemetrySettingsError("; ".join(problems))
        self.settings = settings
        self._metrics = metrics
        self._events: deque[tuple[str, bytes]] = deque()
        self._alarms: dict[str, bytes] = {}
        self._alarm_active: dict[str, bool] = {}
        self._pending_alarms: set[str] = set()
        self._wake = asyncio.Event()
        self.dropped = 0
        self.connected = False

    @property
    def status_topic(self) -> str:
        return self.settings.topic("status")

    @property
    def active_alarms(self) -> list[str]:
        """Active alarms as ``name`` or ``name/subject``."""
        return sorted(key for key, active in self._alarm_active.items() if active)

    def _payload(self, base: dict[str, Any], fields: dict[str, Any]) -> bytes:
        report = Redaction()
        # Reserved keys are set last so a field cannot spoof the event name or the alarm state.
        body = to_safe({**fields, **base}, report)
        if report.violation:
            body["redaction_violation"] = True
            _log.warning("mqtt_payload_redacted", topic_kind=next(iter(base)), paths=report.paths)
        return json.dumps(body, separators=(",", ":")).encode()

    def publish_event(self, name: str, **fields: Any) -> None:
        """Queue an event for ``<prefix>/<site>/event/<name>``; never blocks, may drop oldest."""
        check_name("event", name)
        payload = self._payload({"event": name, "site": self.settings.site, "ts": _now()}, fields)
        if len(self._events) >= self.settings.queue_size:
            self._events.popleft()
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.mqtt_dropped.inc()
        self._events.append((self.settings.topic("event", name), payload))
        self._wake.set()

    def set_alarm(self, name: str, active: bool, subject: str | None = None, **fields: Any) -> None:
        """Set the retained state of ``<prefix>/<site>/alarm/<name>[/<subject>]``; never dropped.

        ``subject`` (a tunnel or peer name) keeps one alarm kind raised for several tunnels
        apart: clearing it for one tunnel must not clear it for another.
        """
        check_name("alarm", name)
        key = name
        base: dict[str, Any] = {"alarm": name, "active": bool(active)}
        if subject is not None:
            if not isinstance(subject, str) or not _SITE.match(subject):
                raise TelemetryNameError(
                    f"alarm subject {subject!r} must be a tunnel or peer name "
                    "(letters, digits, '.', '_' or '-'): it becomes a topic level"
                )
            key = f"{name}/{subject}"
            base["subject"] = subject
        base.update(site=self.settings.site, ts=_now())
        self._alarms[key] = self._payload(base, fields)
        self._alarm_active[key] = bool(active)
        self._pending_alarms.add(key)
        self._wake.set()

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        ceiling = min(s.backoff_max_s, s.backoff_initial_s * 2.0 ** min(attempt, 20))
        return ceiling * random.uniform(0.5, 1.0)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        return aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id or f"qkd-gateway-{s.site}",
            keepalive=s.keepalive_s,
            timeout=s.publish_timeout_s,
            tls_context=self._tls,
            clean_session=True,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
        )

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        if self._metrics is not None:
            self._metrics.mqtt_connected.set(1 if value else 0)

    async def run(self) -> None:
        """Connect, publish, reconnect with capped jittered backoff; until cancelled.

        On cancellation it publishes the retained ``offline`` status (best effort, bounded by a
        short timeout) and disconnects cleanly, so subscribers see a planned stop at once.
        """
        s = self.settings
        attempt = 0
        while True:
            client = self._client()
            try:
                await asyncio.wait_for(client.__aenter__(), s.connect_timeout_s)
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                delay = self._backoff(attempt)
                attempt += 1
                _log.warning("mqtt_connect_failed", broker=f"{s.host}:{s.port}",
                             error=_describe(exc, s), retry_in_s=round(delay, 2))  # fmt: skip
                await asyncio.sleep(delay)
                continue
            attempt = 0
            _log.info("mqtt_connected", broker=f"{s.host}:{s.port}", tls=s.tls)
            try:
                await self._session(client)
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                _log.warning("mqtt_disconnected", broker=f"{s.host}:{s.port}",
                             error=str(exc) or type(exc).__name__)  # fmt: skip
            finally:
                self._set_connected(False)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.__aexit__(None, None, None), _GOODBYE_TIMEOUT_S)
            await asyncio.sleep(self._backoff(0))
            attempt = 1

    async def _session(self, client: aiomqtt.Client) -> None:
        self._set_connected(True)
        await client.publish(self.status_topic, b"online", qos=1, retain=True)
        self._pending_alarms = set(self._alarms)
        drain = asyncio.create_task(self._drain(client), name="mqtt-drain")
        watch = asyncio.create_task(self._watch(client), name="mqtt-watch")
        try:
            done, _ = await asyncio.wait({drain, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            drain.cancel()
            watch.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    client.publish(self.status_topic, b"offline", qos=1, retain=True),
                    _GOODBYE_TIMEOUT_S,
                )
            raise
        finally:
            for task in (drain, watch):
                task.cancel()
            await asyncio.gather(drain, watch, return_exceptions=True)
        for task in done:
            task.result()  # re-raises the MqttError that ended the session
        raise aiomqtt.MqttError("session ended")

    async def _watch(self, client: aiomqtt.Client) -> None:
        # We subscribe to nothing; iterating only serves to raise MqttError when the connection
        # drops while the queue is idle (aiomqtt reports disconnection through the iterator).
        async for _ in client.messages:
            pass

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            for key in sorted(self._pending_alarms):
                payload = self._alarms[key]
                await client.publish(self.settings.topic("alarm", key), payload, 1, True)
                if self._alarms[key] is payload:  # unchanged while we awaited the PUBACK
                    self._pending_alarms.discard(key)
            while self._events:
                item = self._events[0]
                await client.publish(item[0], item[1], qos=1, retain=False)
                if self._events and self._events[0] is item:
                    self._events.popleft()
            if not self._pending_alarms and not self._events:
                await self._wake.wait()
