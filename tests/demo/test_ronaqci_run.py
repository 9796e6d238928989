"""The RoNaQCI demo for real, shortened for CI: six daemons, 21 KMEs, wireguard-go tunnels, the
verdict asserted (rotations, matching keys, no loss, the starved span's stretch and clear); and
`--mqtt` against a real mosquitto. Both scan everything the demo wrote or printed for the
preshared keys WireGuard held during the run."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.demo import DemoOptions, DemoReport, LabPlan, plan_for, run_demo
from tests.demo.conftest import leftovers
from tests.telemetry.broker import MOSQUITTO, Broker
from tests.telemetry.leakscan import leaks
from tests.telemetry.mqttobs import observe, payload_json


def _psks(netns: str, interface: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "wg", "show", interface,
                          "preshared-keys"], capture_output=True, text=True, check=False).stdout
    return {line.split("\t")[1] for line in out.splitlines()
            if "\t" in line and "(none)" not in line}


class Collector:
    """Reads every tunnel end's PSK every 0.25 s once the pings started."""

    def __init__(self, options: DemoOptions) -> None:
        self.options, self.lines, self.seen = options, list[str](), set[str]()
        self.started = asyncio.Event()

    def say(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith("pinging"):
            self.started.set()

    async def run(self) -> None:
        await self.started.wait()
        match = re.search(r"lab (qgd\d+[a-z])", self.lines[0])
        assert match
        plan: LabPlan = plan_for(self.options, match.group(1), Path("/nonexistent"), "auto")
        ends = [(plan.by_name[s].netns, t.interface(s)) for t in plan.tunnels
                for s in (t.hub, t.spoke)]
        while True:
            for netns, interface in ends:
                self.seen.update(await asyncio.to_thread(_psks, netns, interface))
            await asyncio.sleep(0.25)

    def run_dir(self) -> Path:
        match = re.search(r"files in (\S+)", self.lines[0])
        assert match
        return Path(match.group(1))

    def assert_no_psk_in(self, text: str) -> None:
        for psk in self.seen:
            assert leaks(text, base64.b64decode(psk)) == [], "a PSK leaked"


async def _run(options: DemoOptions) -> tuple[Collector, DemoReport]:
    collector = Collector(options)
    task = asyncio.create_task(collector.run())
    try:
        report = await run_demo(options, say=collector.say)
    finally:
        task.cancel()
    return collector, report


@pytest.mark.netns
async def test_ronaqci_short_run_passes_its_verdict(tmp_path: Path) -> None:
    # Rekey 3 s: reject_after 9 s, stretched rotation up to 7.5 s; 45 s of pings reach past
    # the gateways' second look at the KMS stock (30 s), so the alarm's clear is checked.
    options = DemoOptions(topology="ronaqci", duration=45, rekey_interval=3, keep=True,
                          picture=tmp_path / "ronaqci.svg")
    collector, report = await _run(options)
    run_dir = collector.run_dir()
    try:
        assert report.ok, report.table()
        assert report.clear_checked
        assert len(report.tunnels) == 5
        for t in report.tunnels:
            assert t.rotations >= 3 and t.psk_match and t.lost == 0 and t.sent >= 800
            assert t.handshakes is not None and t.handshakes >= 1
        cluj = report.tunnels[0]
        assert cluj.name == "bucharest--cluj-napoca"
        assert list(cluj.paths) == ["ronaqci", "ronaqci-2"]
        assert cluj.achieved is not None and "qkd:ronaqci+qkd:ronaqci-2" in cluj.achieved
        starved = report.tunnels[-1]
        assert starved.starved and starved.alarm_raised and starved.alarm_cleared
        assert starved.longest_low_gap_s is not None and starved.longest_low_gap_s > 3.6
        assert report.backup_keys is not None and report.backup_keys > 0
        assert report.cpu.get("daemons", 0) > 0 and report.startup_cpu_s
        assert report.picture == tmp_path / "ronaqci.svg"
        svg = report.picture.read_text()
        assert svg.startswith("<svg") and "constanta" in svg
        assert len(collector.seen) >= 5 * 3  # keys changed on every tunnel
        logs = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*.log"))
        assert '"event": "alarm_cleared"' in logs and '"kms_low_stock"' in logs
        collector.assert_no_psk_in(logs + "\n".join(collector.lines) + report.table() + svg)
    finally:
        shutil.rmtree(run_dir)
    assert leftovers(report.prefix) == []


@pytest.mark.netns
@pytest.mark.mqtt
async def test_every_site_publishes_to_the_broker_given_with_mqtt(tmp_path: Path) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed: `apt-get install mosquitto` (Debian package)")
    broker = Broker(tmp_path)
    broker.start()
    try:
        async with observe(broker, topic="qkd-demo/#") as obs:
            options = DemoOptions(topology="pair", duration=4, rekey_interval=1,
                                  mqtt=f"127.0.0.1:{broker.port}")
            collector, report = await _run(options)
            await asyncio.sleep(0.5)  # the last messages in flight
    finally:
        broker.stop()
    assert report.ok, report.table()
    topics = {m.topic.value for m in obs.messages}
    for site in ("bucharest", "cluj-napoca"):
        assert f"qkd-demo/pair/{site}/status" in topics
        assert f"qkd-demo/pair/{site}/event/tunnel_rekeyed" in topics
        status = obs.on(f"qkd-demo/pair/{site}/tunnel/bucharest--cluj-napoca/status")
        assert status and payload_json(status[-1])["epoch"] >= 1
    rekeys = [payload_json(m) for m in obs.messages if m.topic.value.endswith("tunnel_rekeyed")]
    assert len(rekeys) >= 2 * 3
    payloads = "\n".join(m.payload.decode("latin-1") for m in obs.messages
                         if isinstance(m.payload, bytes))
    assert collector.seen
    collector.assert_no_psk_in(payloads)
    assert leftovers(report.prefix) == []
