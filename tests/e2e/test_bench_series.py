"""bench.fullstack.series at small scale, so that the tool cannot rot: real daemons of the
full-stack pair rotate, and every row and the summary carry their figures. No timing is
asserted (performance is the bench's output, not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def test_series_reports_rows_and_a_summary_of_real_rotations() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.fullstack.series", "--tunnels", "2",
                           "--interval", "1", "--seconds", "6", "--step", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    head, rows, summary = lines[0], lines[1:-1], lines[-1]
    assert head["tunnels"] == 2 and head["keyed_s"] >= 0
    assert len(rows) >= 2
    for row in rows:
        for site in ("alpha", "beta"):
            assert set(row[site]) == {"cpu_share", "rekeys_per_s", "ctx_switches_per_s"}
    for site in ("alpha", "beta"):
        # Two tunnels every second over ~6 s: rotations happened, and cost CPU.
        assert summary[site]["rekeys_per_s"] > 0 and summary[site]["cpu_ms_per_rekey"] > 0
        assert summary[site]["rss_mb"] > 0
