"""run_demo end to end with a stand-in daemon (tests/demo/standin_daemon.py): the lab waits
for keys, pings through real wireguard-go tunnels, reads rotations, compares keys, and its
verdict fails when the two ends' keys differ."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import sys
import time
from pathlib import Path

import pytest

from gateway.demo import (
    DemoOptions,
    LabPlan,
    LabProcess,
    LabProcessError,
    ProcessSet,
    SitePlan,
    run_demo,
)
from tests.demo.conftest import leftovers

STANDIN = Path(__file__).with_name("standin_daemon.py")


def standin(seeds: dict[str, str]):  # type: ignore[no-untyped-def]
    async def start(site: SitePlan, plan: LabPlan, procs: ProcessSet) -> LabProcess:
        return await procs.start(f"stand-in {site.name}", site.netns,
                                 [sys.executable, str(STANDIN), str(site.config_path)],
                                 site.log_path, env={"STANDIN_SEED": seeds[site.name],
                                                     "PYTHONPATH": str(Path.cwd())})
    return start


@pytest.mark.netns
async def test_three_sites_rotate_with_matching_keys_and_no_loss(
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.demo.session.PROGRESS_EVERY_S", 1.0)
    seed = os.urandom(16).hex()
    lines: list[str] = []
    report = await run_demo(DemoOptions(sites=3, duration=3.5, rekey_interval=1),
                            start_site=standin({"bucharest": seed, "cluj-napoca": seed,
                                                "iasi": seed}), say=lines.append)
    assert report.ok, report.table()
    assert [t.name for t in report.tunnels] == ["bucharest--cluj-napoca", "bucharest--iasi"]
    for t in report.tunnels:
        assert t.rotations >= 3 and t.psk_match is True
        assert t.sent >= 65 and t.lost == 0 and t.target.startswith("10.77.")
    assert "PASS every check" in report.table()
    assert any("tunnels keyed" in line for line in lines)
    progress = [line for line in lines if "bucharest--iasi: " in line]
    assert len(progress) == 3 and re.search(r"\d+ sent, 0 lost, \d+ rotations", progress[-1])
    assert leftovers(report.prefix) == []
    # The PSKs the lab compared never appear in anything it printed or reported.
    out = "".join(capfd.readouterr()) + "\n".join(lines) + report.table() + repr(report)
    for name in ("bucharest--cluj-napoca", "bucharest--iasi"):
        # The stand-in's epochs are Unix seconds (rekey 1 s): every epoch of this run.
        for epoch in range(int(time.time()) - 30, int(time.time()) + 1):
            psk = hmac.new(bytes.fromhex(seed), f"{name}/{epoch}".encode(),
                           hashlib.sha256).digest()
            assert psk.hex() not in out and base64.b64encode(psk).decode() not in out


@pytest.mark.netns
async def test_verdict_fails_when_keys_differ() -> None:
    report = await run_demo(DemoOptions(sites=2, duration=1.5, rekey_interval=1),
                            start_site=standin({"bucharest": "00" * 16,
                                                "cluj-napoca": "11" * 16}))
    assert not report.ok
    (tunnel,) = report.tunnels
    assert tunnel.psk_match is False
    assert tunnel.lost == tunnel.sent  # the handshake cannot complete: nothing gets through
    table = report.table()
    assert "do not hold the same preshared key" in table and "DIFFER" in table
    assert leftovers(report.prefix) == []


@pytest.mark.netns
async def test_daemon_that_exits_before_keying_fails_the_setup() -> None:
    async def crashing(site: SitePlan, plan: LabPlan, procs: ProcessSet) -> LabProcess:
        return await procs.start(f"daemon {site.name}", site.netns,
                                 ["sh", "-c", "echo 'config: boom'; exit 3"], site.log_path)

    prefix: list[str] = []
    with pytest.raises(LabProcessError, match=r"exited with code 3; last output .*\n.*boom"):
        await run_demo(DemoOptions(sites=2, duration=5), start_site=crashing,
                       say=lambda line: prefix.append(line.split()[1].rstrip(":")))
    assert leftovers(prefix[0]) == []


@pytest.mark.netns
async def test_daemon_dying_while_pinging_is_reported() -> None:
    seed = os.urandom(16).hex()
    started = asyncio.Event()
    standins: list[LabProcess] = []
    start = standin({"bucharest": seed, "cluj-napoca": seed})

    async def tracked(site: SitePlan, plan: LabPlan, procs: ProcessSet) -> LabProcess:
        standins.append(await start(site, plan, procs))
        return standins[-1]

    async def kill_spoke() -> None:
        await started.wait()
        await asyncio.sleep(0.5)
        os.kill(standins[1].pid, 9)

    killer = asyncio.create_task(kill_spoke())
    report = await run_demo(DemoOptions(sites=2, duration=10, rekey_interval=1),
                            start_site=tracked,
                            say=lambda line: started.set() if line.startswith("pinging") else None)
    await killer
    assert not report.ok
    assert report.duration_s < 5  # the run ends at the death, not after --duration
    assert any("stand-in cluj-napoca exited with code -9" in e for e in report.errors)
    assert leftovers(report.prefix) == []
