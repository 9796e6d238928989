"""What the daemon's telemetry costs per call: one ``TelemetryBus.emit`` of a ``tunnel_rekeyed``
event through the JSON log pipeline (to a discarding stream), and ``alarm`` raised and cleared
for N tunnels (start-up fails every tunnel closed: N alarms raised in a row).

    .venv/bin/python bench/telemetry_cost.py [--events 20000] [--tunnels 10000]
    PYTHONPATH=/other/checkout .venv/bin/python bench/telemetry_cost.py   # before/after

CPU time (process_time); median of 5 rounds. A baseline from the same run: one stdlib
``logging`` call of the same fields through a bare ``json.dumps`` formatter.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import time

from gateway.telemetry import GatewayMetrics, TelemetryBus
from gateway.telemetry.logging import configure_logging

FIELDS = {"tunnel": "t123", "epoch": 42, "key_ids": ["6c9b7a3e-2f41-4d8e-9a55-0e7c1b2d3f40"],
          "achieved": "qkd+pqc", "rekey_ms": 3.141}


class _Null(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def _rounds(fn: object, n: int, rounds: int = 5) -> float:
    out = []
    for _ in range(rounds):
        t = time.process_time()
        fn(n)  # type: ignore[operator]
        out.append((time.process_time() - t) / n * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--tunnels", type=int, default=10000)
    args = ap.parse_args()

    class _Json(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"event": record.msg, **record.__dict__.get("f", {})})

    base = logging.getLogger("baseline")
    h = logging.StreamHandler(_Null())
    h.setFormatter(_Json())
    base.addHandler(h)
    base.propagate = False

    def baseline(n: int) -> None:
        for _ in range(n):
            base.info("tunnel_rekeyed", extra={"f": FIELDS})

    configure_logging("json", "info", _Null())
    bus = TelemetryBus(GatewayMetrics())

    def emit(n: int) -> None:
        for _ in range(n):
            bus.emit("tunnel_rekeyed", **FIELDS)

    def alarms(n: int) -> None:
        b = TelemetryBus(GatewayMetrics())
        for i in range(n):
            b.alarm("tunnel_key_expired", True, tunnel=f"t{i}", epoch=0, reason="start")
        for i in range(n):
            b.alarm("tunnel_key_expired", False, tunnel=f"t{i}", epoch=1)

    b_us = _rounds(baseline, args.events)
    e_us = _rounds(emit, args.events)
    a_us = _rounds(alarms, args.tunnels, rounds=3) / 2
    print(json.dumps({"baseline_log_us": round(b_us, 1), "emit_us": round(e_us, 1),
                      "emit_vs_baseline": round(e_us / b_us, 2),
                      f"alarm_us_at_{args.tunnels}_tunnels": round(a_us, 1)}))


if __name__ == "__main__":
    main()
