"""bench.fullstack.mqtt_status at small scale, so that the tool cannot rot: real daemons with MQTT
on a real mosquitto rotate, the retained statuses reach a subscriber, one per rekey."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def test_mqtt_status_counts_the_statuses_of_real_rotations() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.fullstack.mqtt_status", "--tunnels", "2",
                           "--interval", "2", "--seconds", "8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    [result] = [json.loads(line) for line in done.stdout.splitlines()]
    assert result["tunnels"] == 2 and result["alpha_rekeys"] > 0
    # The 2 retained statuses first, then about one per rekey (a rotation that completes as the
    # window closes may land on either side of it).
    assert result["status_messages"] == 2 + result["live_status_messages"]
    assert abs(result["live_status_messages"] - result["alpha_rekeys"]) <= 2
    assert result["pending_publish_warnings_in_alpha_log"] == 0
