"""The daemon's side of ``KeysDiscarded`` (issue 13): one ``keys_discarded`` event with the
reason and no key material, and the counters (the master's keys only: the slave logs its side
of the same keys, counting both would count a key twice)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from gateway.daemon.actions import ActionRunner
from gateway.protocol import KeysDiscarded, Retire
from gateway.telemetry import GatewayMetrics, TelemetryBus

pytestmark = pytest.mark.unit


def _runner() -> tuple[ActionRunner, GatewayMetrics]:
    metrics = GatewayMetrics()
    runner = ActionRunner(pools={}, sources={}, keepers={}, bus=TelemetryBus(metrics),
                          feed=lambda ev: None)
    return runner, metrics


def _value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.collectors.get_sample_value(name, labels)
    return 0.0 if got is None else float(got)


def test_discards_are_logged_and_counted_at_once() -> None:
    runner, metrics = _runner()
    with capture_logs() as logs:
        # No event loop task runs: the report must not wait for the action lanes (at shutdown
        # they have stopped already).
        runner.submit(KeysDiscarded("wg-a", 7, "kme-1", 1, "collision", True))
        runner.submit(KeysDiscarded("wg-a", 0, "kme-1", 2, "shutdown", True))
        runner.submit(KeysDiscarded("wg-a", 8, "kme-1", 1, "timeout", False))
    events = [e for e in logs if e["event"] == "keys_discarded"]
    assert [(e["reason"], e["count"], e["role"], e["log_level"]) for e in events] == [
        ("collision", 1, "master", "warning"), ("shutdown", 2, "master", "info"),
        ("timeout", 1, "slave", "warning")]
    assert all(e["tunnel"] == "wg-a" and e["kms"] == "kme-1" for e in events)
    # The master's 3 keys are wasted stock; the slave's key is the peer's (counted there).
    assert _value(metrics, "qkd_gateway_keys_wasted_total", kms="kme-1") == 3
    assert _value(metrics, "qkd_gateway_events_total", event="keys_discarded") == 3
    assert runner._queue.empty()


def test_other_actions_still_queue() -> None:
    runner, _ = _runner()
    runner.submit(Retire("wg-a", 3))
    assert runner._queue.qsize() == 1
