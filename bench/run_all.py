"""`make bench`: every benchmark in bench/ in turn, then bench/results/latest.json.

Each benchmark prints its own figures and ratios. The full-stack benchmark
(bench/bench_fullstack.py, JSON in bench/results/fullstack.json) and the tunnel benchmark
(bench/bench_tunnel.py, bench/results/tunnel.json) feed latest.json: the keys of issue 12, each
a measured figure from this run or null with a ``<key>_reason``. Budget: <= 10 minutes on the
2-core build machine (the per-benchmark arguments below are sized for it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: name -> extra arguments; anything else in bench/bench_*.py runs with its defaults.
ARGS: dict[str, list[str]] = {
    "bench_fullstack.py": ["--out", str(RESULTS / "fullstack.json")],
    "bench_tunnel.py": ["--seconds", "8", "--rounds", "2", "--out", str(RESULTS / "tunnel.json")],
}
#: Benchmarks that are run by hand (minutes long, or attack tools), not by `make bench`.
SKIP = {"bench_xfrm.py", "soak.py", "attack_preauth.py"}

KEYS = ("rekeys_per_s", "rekeys_per_s_vs_strongswan", "cpu_per_rekey_vs_floor",
        "cpu_per_rekey_vs_strongswan", "p99_rekey_ms", "rotation_packets_lost",
        "throughput_ratio_rotating", "rss_mb_10k_tunnels", "qkd_bits_per_rekey", "qkd_keys_wasted")


def _load(path: Path, started: float) -> dict[str, Any] | None:
    """The JSON a benchmark wrote in this run (an older file does not count)."""
    if not path.exists() or path.stat().st_mtime < started:
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else None


def latest(started: float, failed: list[str]) -> dict[str, Any]:
    full = _load(RESULTS / "fullstack.json", started)
    tunnel = _load(RESULTS / "tunnel.json", started)
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "failed": failed}
    summary = (full or {}).get("summary", {})
    for key in KEYS:
        src = tunnel if key in ("rotation_packets_lost", "throughput_ratio_rotating") else summary
        value = None if src is None else src.get(key)
        out[key] = value
        if value is None:
            why = (summary.get(f"{key}_reason") if src is summary else None)
            out[f"{key}_reason"] = why or (
                "its benchmark did not run or failed in this run (see the output above)")
    for key, value in summary.items():
        out.setdefault(key, value)
    if tunnel is not None:
        out["tunnel"] = tunnel
    return out


def main() -> int:
    started = time.time()
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        if script.name in SKIP:
            continue
        print(f"== {script.name}", flush=True)
        t0 = time.monotonic()
        argv = [sys.executable, str(script), *ARGS.get(script.name, [])]
        if subprocess.run(argv, check=False).returncode != 0:
            failed.append(script.name)
        print(f"== {script.name}: {time.monotonic() - t0:.0f} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = latest(started, failed)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in KEYS}, indent=1))
    print(f"wrote {RESULTS / 'latest.json'} in {time.time() - started:.0f} s")
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
