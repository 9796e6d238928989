"""Helpers for the MQTT tests: a recording subscriber and a publisher run as a task."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt

from gateway.telemetry import MqttPublisher
from tests.telemetry.broker import OBSERVER_SAE, Broker

PREFIX = "qkd-gateway"


class Observer:
    """A subscriber to everything under the prefix, recording every message it receives."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []

    async def wait_for(
        self, topic: str, pred: Callable[[aiomqtt.Message], bool] = lambda m: True, t: float = 5
    ) -> aiomqtt.Message:
        deadline = time.monotonic() + t
        while time.monotonic() < deadline:
            for m in self.messages:
                if m.topic.value == topic and pred(m):
                    return m
            await asyncio.sleep(0.01)
        seen = [(m.topic.value, m.payload) for m in self.messages]
        raise AssertionError(f"no message on {topic} within {t}s; seen {seen}")

    def on(self, topic: str) -> list[aiomqtt.Message]:
        return [m for m in self.messages if m.topic.value == topic]


@asynccontextmanager
async def observe(
    broker: Broker, tls: bool = False, topic: str = f"{PREFIX}/#"
) -> AsyncIterator[Observer]:
    ctx = None
    if tls:
        files = broker.client_tls(OBSERVER_SAE)
        ctx = ssl.create_default_context(cafile=str(files["tls_ca"]))
        ctx.load_cert_chain(str(files["tls_cert"]), str(files["tls_key"]))
    port = broker.tls_port if tls else broker.port
    async with aiomqtt.Client("127.0.0.1", port, tls_context=ctx, timeout=5) as client:
        obs = Observer(client)
        await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for message in client.messages:
                obs.messages.append(message)

        reader = asyncio.create_task(read())
        try:
            yield obs
        finally:
            reader.cancel()


@asynccontextmanager
async def running(pub: MqttPublisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(pub.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def payload_json(m: aiomqtt.Message) -> dict[str, Any]:
    assert isinstance(m.payload, bytes)
    return dict(json.loads(m.payload))
