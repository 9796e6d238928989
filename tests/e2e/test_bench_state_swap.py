"""bench.fullstack.state_swap at small scale, so that the tool cannot rot: both ways rewrite
real files and each batch size gets its ratio. No timing is asserted (performance is the
bench's output, not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def test_state_swap_reports_both_ways_and_a_ratio_per_batch_size(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.fullstack.state_swap", "--files", "20",
                           "--batch", "2,8", "--rounds", "2", "--dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert {(r["batch"], r["way"]) for r in rows} == {(b, w) for b in (2, 8)
                                                      for w in ("fresh", "spare")}
    assert all(r["cpu_us_per_file"] > 0 for r in rows)
    assert set(summary) == {"batch_2_cpu_spare_over_fresh", "batch_8_cpu_spare_over_fresh"}
    assert list(tmp_path.iterdir()) == []  # the tool removed its directory
