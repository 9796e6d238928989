"""Publish gateway events and alarms to an MQTT broker, without ever blocking the daemon.

Topics (``<prefix>`` defaults to ``qkd-gateway``, ``<site>`` is this gateway's site name)::

    <prefix>/<site>/status               "online" (retained); the broker publishes the
                                         last will "offline" (retained) if we vanish
    <prefix>/<site>/event/<event_name>   JSON, not retained, QoS 1
    <prefix>/<site>/alarm/<alarm_name>[/<subject>]
                                         JSON with "active": true/false, retained, QoS 1;
                                         <subject> is the tunnel or peer the alarm is about
    <prefix>/<site>/tunnel/<tunnel>/status
                                         JSON status of one tunnel, retained, QoS 1; an empty
                                         retained message deletes it when the tunnel goes

Delivery model: :meth:`MqttPublisher.publish_event` and :meth:`MqttPublisher.set_alarm` only
touch in-memory state and return at once; the :meth:`MqttPublisher.run` task ships it. Events
wait in a bounded queue that drops the *oldest* event when full (counted in :attr:`dropped`).
Alarms are state, not history: the latest state per alarm is kept (so never dropped, and bounded
by the number of alarm names) and *all* of them are republished on every (re)connect, so a broker
that restarted without persistence still shows the current alarms. Tunnel statuses are state in
the same way. A message leaves the queue
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
import ssl
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

import aiomqtt
import structlog

from gateway.telemetry.catalog import GatewayMetrics
from gateway.telemetry.errors import TelemetryNameError, TelemetrySettingsError
from gateway.telemetry.mqtt_settings import (
    MqttSettings,
    check_name,
    check_subject,
    describe_error,
    tls_context,
)
from gateway.telemetry.redact import Redaction, to_safe

__all__ = ["MqttPublisher", "MqttSettings", "check_name"]

_log = structlog.get_logger(__name__)

# The graceful "offline" at shutdown is best effort: a dead broker must not delay the exit.
_GOODBYE_TIMEOUT_S = 2.0
# Retained states (alarms, tunnel statuses) republished after a reconnect go out this many at a
# time: 10,000 tunnels one PUBACK round trip after another would take minutes over a WAN.
_STATE_BATCH = 64


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
                self._tls = tls_context(settings)
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
        self._tunnels: dict[str, bytes] = {}
        self._pending_tunnels: set[str] = set()
        self._clearing: set[str] = set()
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
            check_subject("alarm subject", subject)
            key = f"{name}/{subject}"
            base["subject"] = subject
        base.update(site=self.settings.site, ts=_now())
        self._alarms[key] = self._payload(base, fields)
        self._alarm_active[key] = bool(active)
        self._pending_alarms.add(key)
        self._wake.set()

    def set_tunnel_status(self, tunnel: str, fields: Mapping[str, Any]) -> None:
        """Set the retained JSON of ``<prefix>/<site>/tunnel/<tunnel>/status``; never dropped.

        Like alarms, only the latest status per tunnel is kept (a burst of changes while the
        broker is slow goes out once) and every status is republished after a reconnect.
        """
        check_subject("tunnel", tunnel)
        base = {"tunnel": tunnel, "site": self.settings.site, "ts": _now()}
        self._tunnels[tunnel] = self._payload(base, dict(fields))
        self._clearing.discard(tunnel)
        self._pending_tunnels.add(tunnel)
        self._wake.set()

    def clear_tunnel_status(self, tunnel: str) -> None:
        """Delete the retained status of a removed tunnel (an empty retained message)."""
        check_subject("tunnel", tunnel)
        self._tunnels.pop(tunnel, None)
        self._pending_tunnels.discard(tunnel)
        self._clearing.add(tunnel)
        self._wake.set()

    def tunnel_topic(self, tunnel: str) -> str:
        return self.settings.topic("tunnel", tunnel, "status")

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        ceiling = min(s.backoff_max_s, s.backoff_initial_s * 2.0 ** min(attempt, 20))
        return ceiling * random.uniform(0.5, 1.0)

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id or f"qkd-gateway-{s.site}",
            keepalive=s.keepalive_s,
            timeout=s.publish_timeout_s,
            tls_context=self._tls,
            clean_session=True,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
        )
        # _batched keeps up to _STATE_BATCH publishes waiting for their PUBACK on purpose.
        # aiomqtt warns from 11 pending calls on, one log line per publish past that: ~54
        # warnings for every batch of retained states (thousands per rotation wave at 10,000
        # tunnels). More than a batch still warns: that would be a real pile-up.
        client.pending_calls_threshold = _STATE_BATCH
        return client

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
                             error=describe_error(exc, s), retry_in_s=round(delay, 2))  # fmt: skip
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
        # Our own retained statuses come back once: those of tunnels we do not know are stale.
        await client.subscribe(self.tunnel_topic("+"), qos=1)
        self._pending_alarms = set(self._alarms)
        self._pending_tunnels = set(self._tunnels)
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
        # Iterating also serves to raise MqttError when the connection drops while the queue is
        # idle (aiomqtt reports disconnection through the iterator).
        loop = asyncio.get_running_loop()
        async for message in client.messages:
            levels = message.topic.value.split("/")
            if message.retain and message.payload and len(levels) >= 2:
                tunnel = levels[-2]
                if tunnel not in self._tunnels:
                    grace = self.settings.stale_status_grace_s
                    loop.call_later(grace, self._clear_if_unknown, tunnel)

    def _clear_if_unknown(self, tunnel: str) -> None:
        """A retained status on the broker for a tunnel not reported since we connected: left by
        a run whose configuration still had it. Delete it so dashboards show no ghost tunnel."""
        if tunnel not in self._tunnels and tunnel not in self._clearing:
            _log.info("mqtt_stale_tunnel_status_cleared", tunnel=tunnel)
            with contextlib.suppress(TelemetryNameError):
                self.clear_tunnel_status(tunnel)

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            await self._ship_states(client, "alarm", self._alarms, self._pending_alarms)
            cleared = sorted(self._clearing)
            await _batched(
                client.publish(self.tunnel_topic(t), b"", qos=1, retain=True) for t in cleared
            )
            self._clearing.difference_update(t for t in cleared if t not in self._tunnels)
            await self._ship_states(client, "tunnel", self._tunnels, self._pending_tunnels)
            while self._events:
                item = self._events[0]
                await client.publish(item[0], item[1], qos=1, retain=False)
                if self._events and self._events[0] is item:
                    self._events.popleft()
            if not (self._pending_alarms or self._pending_tunnels or self._clearing
                    or self._events):  # fmt: skip
                await self._wake.wait()

    async def _ship_states(
        self, client: aiomqtt.Client, kind: str, states: dict[str, bytes], pending: set[str]
    ) -> None:
        """Publish the pending retained states; each leaves ``pending`` once PUBACKed, unless
        it changed meanwhile (then the newer payload goes out on the next round)."""
        keys = sorted(pending)
        sent = [(key, states[key]) for key in keys]
        topic = self.tunnel_topic if kind == "tunnel" else lambda k: self.settings.topic(kind, k)
        await _batched(client.publish(topic(key), body, 1, True) for key, body in sent)
        for key, body in sent:
            if states.get(key) is body:
                pending.discard(key)


async def _batched(publishes: Iterable[Awaitable[object]]) -> None:
    """Await the publishes ``_STATE_BATCH`` at a time (each waits for its PUBACK)."""
    batch: list[Awaitable[object]] = []
    for publish in publishes:
        batch.append(publish)
        if len(batch) >= _STATE_BATCH:
            await asyncio.gather(*batch)
            batch = []
    if batch:
        await asyncio.gather(*batch)
