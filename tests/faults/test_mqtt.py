"""The MQTT broker gone and back (a real Debian mosquitto in the site's namespace): telemetry
must never stop the data plane. Rotations carry on while the broker is down; the daemon
reconnects by itself and publishes again (status `online` and new events) once it is back."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import NAMES, FaultLab, edit_config, flowing, ping_window

pytestmark = [pytest.mark.netns, pytest.mark.mqtt, pytest.mark.timeout(300)]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PORT = 18830


class NsBroker:
    def __init__(self, netns: str, directory: Path) -> None:
        self.netns, self.dir = netns, directory
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(f"listener {PORT} 127.0.0.1\nallow_anonymous true\n"
                             "persistence false\nuser root\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, MOSQUITTO, "-c",
                                      str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """mosquitto_sub on every topic, lines "topic payload" into a file."""

    def __init__(self, netns: str, path: Path) -> None:
        self.netns, self.path = netns, path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.path.open("ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, "mosquitto_sub", "-h",
                                      "127.0.0.1", "-p", str(PORT), "-t", "#", "-v"],
                                     stdout=out, stderr=subprocess.DEVNULL)
        out.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def lines(self) -> list[str]:
        return self.path.read_text(errors="replace").splitlines() if self.path.exists() else []


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="needs mosquitto-clients")
async def test_mqtt_broker_gone_and_back() -> None:
    async with FaultLab(rekey_interval=2, reject_after=6) as lab:
        def mqtt(cfg: dict[str, Any]) -> None:
            cfg["telemetry"]["mqtt"] = {"url": f"mqtt://127.0.0.1:{PORT}", "keepalive": "5s"}

        edit_config(lab, NAMES[0], mqtt)
        ns = lab.netns(NAMES[0])
        broker, sub = NsBroker(ns, lab.root), Subscriber(ns, lab.root / "mqtt.txt")
        broker.start()
        try:
            await asyncio.sleep(0.5)
            sub.start()
            await lab.start_daemons()
            await lab.converge(2, 40, "start")

            def rekeyed_msgs() -> int:
                return len([ln for ln in sub.lines() if "/event/tunnel_rekeyed " in ln])

            await lab.wait_for(lambda: rekeyed_msgs() >= 1, 20, "tunnel_rekeyed over MQTT")
            closed = {n: lab.closed_count(n) for n in NAMES}
            async with ping_window(lab) as stats:
                await flowing(lab, stats)
                sub.stop()
                broker.stop()
                await lab.wait_for(lambda: lab.events(NAMES[0], "mqtt_disconnected")
                                   or lab.events(NAMES[0], "mqtt_connect_failed"), 30,
                                   "the daemon to notice the broker gone")
                await lab.converge(4, 40, "the broker gone")
                assert {n: lab.closed_count(n) for n in NAMES} == closed
                before = rekeyed_msgs()
                connected = len(lab.events(NAMES[0], "mqtt_connected"))
                broker.start()
                await asyncio.sleep(0.5)
                sub.start()
                await lab.wait_for(
                    lambda: len(lab.events(NAMES[0], "mqtt_connected")) > connected, 90,
                    "the daemon to reconnect to the broker")
                await lab.wait_for(lambda: rekeyed_msgs() > before, 30,
                                   "new events over MQTT after the broker returned")
                await flowing(lab, stats, 20, 20)
            assert stats.lost <= 3, stats
            assert any(ln.endswith("/status online") for ln in sub.lines()), sub.lines()[:5]
            assert lab.daemons[NAMES[0]].running()
        finally:
            sub.stop()
            broker.stop()
