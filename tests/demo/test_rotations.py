"""Rotation events from daemon logs, and the report's verdict rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.demo import DemoReport, RotationReader, TunnelReport


def _event(tunnel: object, epoch: object, event: str = "tunnel_rekeyed",
           stamp: str = "2026-11-30T07:00:00.500000Z") -> bytes:
    return json.dumps({"timestamp": stamp, "event": event, "tunnel": tunnel, "epoch": epoch,
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
    assert reader.times["a--b"][1] == 1796022000.5  # 2026-11-30T07:00:00.5Z, first log of 1


@pytest.mark.unit
def test_reader_keeps_alarms_and_notable_events(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    lines = [
        {"timestamp": "2026-11-30T07:00:01Z", "event": "alarm_raised", "alarm": "kms_low_stock",
         "subject": "a--b", "tunnel": "a--b", "stored_key_count": 2, "low_stock": 8,
         "next_rekey_s": 12.3, "level": "warning"},
        {"timestamp": "2026-11-30T07:00:02Z", "event": "kms_pool_refilled", "added": 2},
        {"timestamp": "2026-11-30T07:00:40Z", "event": "alarm_cleared",
         "alarm": "kms_low_stock", "subject": "a--b", "stored_key_count": 30},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    reader = RotationReader(log, "bucharest")
    reader.poll()
    assert [e.event for e in reader.alarms] == ["alarm_raised", "alarm_cleared"]
    assert [e.event for e in reader.events] == ["alarm_raised", "alarm_cleared"]
    raised = reader.alarms[0]
    assert raised.site == "bucharest" and raised.fields["next_rekey_s"] == 12.3
    assert raised.text() == ("bucharest: alarm_raised alarm=kms_low_stock subject=a--b "
                             "tunnel=a--b stored_key_count=2 low_stock=8 next_rekey_s=12.3")
    assert reader.alarms[1].time - raised.time == 39.0


@pytest.mark.unit
def test_verdict_rules() -> None:
    good = TunnelReport("a--b", "a", "10.77.1.2", sent=40, received=40, rotations=3,
                        psk_match=True)
    assert DemoReport("qgd1a", lab_only=False, tunnels=[good]).ok
    assert not DemoReport("qgd1a", lab_only=False).ok  # no tunnel is not a pass
    cases = [
        (TunnelReport("t", "a", "x", sent=40, received=39, lost=1, rotations=3,
                      psk_match=True), "1 of 40 pings lost"),
        (TunnelReport("t", "a", "x", sent=40, received=40, rotations=2, psk_match=True),
         "2 rotation(s) seen by both ends; need 3"),
        (TunnelReport("t", "a", "x", sent=40, received=40, rotations=3, psk_match=False),
         "the two ends do not hold the same preshared key"),
        (TunnelReport("t", "a", "x", rotations=3, psk_match=True), "no ping was sent"),
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


def _starved(**kwargs: object) -> TunnelReport:
    fields: dict[str, object] = {"sent": 40, "received": 40, "rotations": 6, "psk_match": True,
                                 "starved": True, "alarm_raised": True, "alarm_cleared": True,
                                 "longest_low_gap_s": 11.8} | kwargs
    return TunnelReport("a--c", "a", "x", **fields)  # type: ignore[arg-type]


@pytest.mark.unit
def test_verdict_on_the_starved_link() -> None:
    def report(tunnel: TunnelReport, duration: float = 60.0) -> DemoReport:
        return DemoReport("qgd1a", lab_only=False, rekey_interval=5.0, reject_after=15.0,
                          duration_s=duration, tunnels=[tunnel])

    assert report(_starved()).clear_bound_s() == 30.0 + 12.5 + 5.0
    assert report(_starved()).ok
    cases = [
        (_starved(alarm_raised=False), "kms_low_stock was never raised"),
        (_starved(longest_low_gap_s=5.9), "rotation did not stretch while the stock was low "
                                          "(at most 5.9 s between rotations; configured 5 s)"),
        (_starved(longest_low_gap_s=None), "(fewer than two rotations while it was low;"),
        (_starved(alarm_cleared=False), "kms_low_stock was not cleared"),
    ]
    for tunnel, message in cases:
        bad = report(tunnel)
        assert not bad.ok and message in bad.table(), bad.table()
    # Too short a run to see the clear: not checked, and the report says why.
    short = report(_starved(alarm_cleared=False), duration=30.0)
    assert short.ok and not short.clear_checked
    assert "clearing not checked: the run pinged 30 s" in short.table()
    assert "a clear needs >= 48 s" in short.table()
