"""`qkd-gateway demo` as a process: report and exit code, signals, crashed-run cleanup."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from gateway.cli import demo as demo_cli
from gateway.demo import stale_prefixes
from tests.demo.conftest import leftovers

DEMO = [sys.executable, "-m", "gateway", "demo"]


def _wait_for_line(stream: IO[str], needle: str, timeout: float = 20.0) -> list[str]:
    seen: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not in output: {seen}")


def _prefix(lines: list[str]) -> str:
    match = re.search(r"lab (qgd\d+[a-z]):", "".join(lines))
    assert match, lines
    return match.group(1)


@pytest.mark.netns
def test_lab_only_run_reports_and_exits_zero() -> None:
    done = subprocess.run([*DEMO, "--topology", "pair", "--lab-only", "--duration", "1.5",
                           "--keep"],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"files in (\S+)", done.stderr)
    assert match, done.stderr
    run_dir = Path(match.group(1))
    try:
        # No private key (identity, WireGuard, TLS) in anything the demo printed.
        keys = [p for p in run_dir.rglob("*.key")]
        assert len(keys) >= 2 * 4
        for key in keys:
            assert key.stat().st_mode & 0o077 == 0
            for line in key.read_text().splitlines():
                if line and not line.startswith("-----"):
                    assert line not in done.stdout and line not in done.stderr
    finally:
        shutil.rmtree(run_dir)
    assert done.returncode == 0, done.stderr
    assert "KME network ready" in done.stderr
    out = done.stdout
    assert re.search(r"bucharest--cluj-napoca\s+198\.18\.0\.11\s+3[01]\s+0\s+0", out), out
    assert "PASS every check" in out
    assert leftovers(_prefix([done.stderr])) == []


@pytest.mark.netns
@pytest.mark.parametrize(("sig", "phase"), [(signal.SIGTERM, "pinging"),
                                            (signal.SIGINT, "pinging"),
                                            (signal.SIGTERM, "lab qgd")])
def test_signal_tears_everything_down(sig: signal.Signals, phase: str) -> None:
    proc = subprocess.Popen([*DEMO, "--topology", "pair", "--lab-only"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = _wait_for_line(proc.stderr, phase)
    prefix = _prefix(lines)
    assert leftovers(prefix)  # the lab exists while it runs
    if phase == "pinging":
        time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    if phase == "pinging":
        # Until Ctrl-C is the normal end of a run: the report, and its verdict as exit code.
        assert proc.returncode == 0, err
        assert "PASS every check" in out
    else:
        assert proc.returncode == 128 + sig, err
        assert "stopped during setup" in err
    assert leftovers(prefix) == []


@pytest.mark.netns
def test_cleanup_option_removes_a_killed_run() -> None:
    proc = subprocess.Popen([*DEMO, "--topology", "pair", "--lab-only"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    prefix = _prefix(_wait_for_line(proc.stderr, "pinging"))
    os.kill(proc.pid, signal.SIGKILL)  # no teardown at all
    proc.wait(5)
    proc.stderr.close()
    assert any(line.startswith(f"{prefix}-kms") for line in leftovers(prefix))
    assert prefix in stale_prefixes()
    done = subprocess.run([*DEMO, "--cleanup"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"removed netns {prefix}-kms" in done.stdout
    assert leftovers(prefix) == []


@pytest.mark.unit
def test_options_and_requirements(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    demo_cli.register(parser.add_subparsers())
    args = parser.parse_args(["demo", "--duration", "60", "--rekey-interval", "5"])
    assert (args.topology, args.sites, args.duration, args.rekey_interval) == (
        "ronaqci", None, 60.0, 5.0)
    assert args.dataplane == "wireguard" and not args.lab_only and args.mqtt is None
    args = parser.parse_args(["demo", "--topology", "star", "--sites", "4", "--dataplane",
                              "mixed", "--mqtt", "127.0.0.1:1883", "--seed", "3"])
    assert (args.topology, args.sites, args.dataplane, args.mqtt, args.seed) == (
        "star", 4, "mixed", "127.0.0.1:1883", 3)
    for bad in (["--sites", "1"], ["--sites", "x"], ["--duration", "0"],
                ["--rekey-interval", "-3"], ["--dataplane", "esp"], ["--topology", "mesh"],
                ["--mqtt", "localhost"], ["--mqtt", "127.0.0.1:0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["demo", *bad])
    assert "expected HOST:PORT, e.g. 127.0.0.1:1883" in capsys.readouterr().err
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert demo_cli.run(parser.parse_args(["demo", "--lab-only"])) == 2
    assert "needs root: run it with sudo" in capsys.readouterr().err
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert demo_cli.run(parser.parse_args(["demo", "--sites", "4"])) == 2
    assert "--sites N goes with --topology star" in capsys.readouterr().err
