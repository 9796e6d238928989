"""bench.fullstack.sweep at small scale, so that the tool cannot rot: a real daemon (record
data plane) comes up and each part of a reconciliation pass gets a figure per tunnel. No timing
is asserted (performance is the bench's output, not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_reports_each_part_of_a_pass() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.fullstack.sweep", "--tunnels", "20",
                           "--passes", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=160)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["tunnels"] == 20 and len(row["passes"]) == 2
    parts = {"interfaces", "keys", "handshakes", "status", "pass"}
    assert set(row["us_per_tunnel_median"]) == parts
    assert all(p["pass"] > 0 and set(p) == parts for p in row["passes"])
