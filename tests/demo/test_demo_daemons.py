"""The real thing: `run_demo` with `qkd-gateway run` daemons (the default start_site), real KME
network, wireguard-go tunnels. Also checks that no preshared key the daemons installed appears
in any log or in the report."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.demo import DemoOptions, run_demo
from tests.demo.conftest import leftovers


def _psks(netns: str, interface: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "wg", "show", interface,
                          "preshared-keys"], capture_output=True, text=True, check=False).stdout
    return {line.split("\t")[1] for line in out.splitlines()
            if "\t" in line and "(none)" not in line}


@pytest.mark.netns
async def test_two_daemons_rotate_and_keep_the_tunnel_up() -> None:
    lines: list[str] = []
    seen: set[str] = set()
    started = asyncio.Event()

    def say(line: str) -> None:
        lines.append(line)
        if line.startswith("pinging"):
            started.set()

    async def collect() -> None:
        await started.wait()
        prefix = re.search(r"lab (qgd\d+[a-z])", lines[0])
        assert prefix
        p = prefix.group(1)
        while True:
            for netns, interface in ((f"{p}-bucharest", f"{p}w1h"),
                                     (f"{p}-cluj-napoca", f"{p}w1s")):
                seen.update(await asyncio.to_thread(_psks, netns, interface))
            await asyncio.sleep(0.25)

    collector = asyncio.create_task(collect())
    try:
        report = await run_demo(DemoOptions(sites=2, duration=3.5, rekey_interval=1, keep=True),
                                say=say)
    finally:
        collector.cancel()
    run_dir = re.search(r"files in (\S+)", lines[0])
    assert run_dir
    try:
        assert report.ok, report.table()
        (tunnel,) = report.tunnels
        assert tunnel.rotations >= 3 and tunnel.psk_match and tunnel.lost == 0
        assert len(seen) >= 3  # the collector saw keys change
        logs = "".join(p.read_text() for p in
                       Path(run_dir.group(1)).rglob("*.log"))
        assert '"event": "tunnel_rekeyed"' in logs
        text = logs + "\n".join(lines) + report.table()
        for psk in seen:
            raw = base64.b64decode(psk)
            assert psk not in text and raw.hex() not in text and raw.hex().upper() not in text
    finally:
        shutil.rmtree(run_dir.group(1))
    assert leftovers(report.prefix) == []
