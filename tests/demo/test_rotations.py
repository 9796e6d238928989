"""Rotation events from daemon logs, and the report's verdict rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.demo import DemoReport, RotationReader, TunnelReport


def _event(tunnel: object, epoch: object, event: str = "tunnel_rekeyed") -> bytes:
    return json.dumps({"event": event, "tunnel": tunnel, "epoch": epoch,
                       "level": "info"}).encode() + b"\n"


@pytest.mark.unit
def test_reader_follows_a_growing_log(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    reader = RotationReader(log)
    assert reader.poll() == {}  # no file yet: nothing, no error
    with open(log, "ab") as f:
        f.write(_event("a--b", 1) + b"Traceback (most recent call last):\n" + _event("a--b", 2))
        f.write(_event("a--b", 2))  # the same epoch twice is one rotation
        f.write(_event("a--c", 7, event="tunnel_installed"))
        f.write(_event("a--c", True) + _event(3, 1) + b"[1, 2]\n")  # malformed: ignored
        f.write(_event("a--c", 1)[:20])  # a line still being written
    assert reader.poll() == {"a--b": {1, 2}}
    with open(log, "ab") as f:
        f.write(_event("a--c", 1)[20:] + _event("a--b", 3))
    assert reader.poll() == {"a--b": {1, 2, 3}, "a--c": {1}}
    assert reader.rotations("a--c") == {1} and reader.rotations("x") == set()


@pytest.mark.unit
def test_verdict_rules() -> None:
    good = TunnelReport("a--b", "a", "10.77.1.2", sent=40, received=40, rotations=2,
                        psk_match=True)
    assert DemoReport("qgd1a", lab_only=False, tunnels=[good]).ok
    assert not DemoReport("qgd1a", lab_only=False).ok  # no tunnel is not a pass
    cases = [
        (TunnelReport("t", "a", "x", sent=40, received=39, lost=1, rotations=2,
                      psk_match=True), "1 of 40 pings lost"),
        (TunnelReport("t", "a", "x", sent=40, received=40, rotations=1, psk_match=True),
         "1 rotation(s) seen by both ends; need 2"),
        (TunnelReport("t", "a", "x", sent=40, received=40, rotations=2, psk_match=False),
         "the two ends do not hold the same preshared key"),
        (TunnelReport("t", "a", "x", rotations=2, psk_match=True), "no ping was sent"),
    ]
    for tunnel, message in cases:
        report = DemoReport("qgd1a", lab_only=False, tunnels=[tunnel])
        assert not report.ok
        assert f"FAIL t: {message}" in report.table()
    # Lab-only runs have no daemons: rotations and keys are not judged.
    lab = TunnelReport("t", "a", "198.18.0.11", sent=40, received=40)
    report = DemoReport("qgd1a", lab_only=True, tunnels=[lab])
    assert report.ok and "PASS every check" in report.table()
    report.errors.append("daemon bucharest exited with code 1")
    assert not report.ok and "FAIL daemon bucharest exited" in report.table()
