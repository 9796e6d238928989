"""Lab processes: run inside their namespace, log to a file, die with their whole group."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from gateway.demo import ProcessSet, Topology, start_in_netns


def _netns_pids(netns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                          check=False).stdout.split()


async def _gone(netns: str, within: float = 5.0) -> list[str]:
    """The namespace's pids once empty, or what is left after ``within`` seconds: a SIGKILLed
    process takes a moment to be reaped on a loaded machine."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while (left := _netns_pids(netns)) and loop.time() < end:
        await asyncio.sleep(0.05)
    return left


@pytest.mark.netns
async def test_output_logged_and_namespace_is_the_sites(topo: Topology, tmp_path) -> None:
    netns = topo.sites["cluj-napoca"].netns
    proc = await start_in_netns("probe", netns, ["sh", "-c", "ip -o -4 addr show wan0; "
                                                 "echo err >&2"], tmp_path / "probe.log")
    assert await proc.wait(5) == 0
    text = (tmp_path / "probe.log").read_text()
    assert "198.18.0.11/24" in text and "err" in text
    assert "err" in proc.log_tail(1)
    assert (tmp_path / "probe.log").stat().st_mode & 0o077 == 0


@pytest.mark.netns
async def test_stop_ends_the_whole_group(topo: Topology, tmp_path) -> None:
    netns = topo.sites["bucharest"].netns
    async with ProcessSet() as procs:
        # A child that leaves a grandchild behind, as a daemon with wireguard-go would.
        proc = await procs.start("forker", netns, ["sh", "-c", "sleep 300 & sleep 300"],
                                 tmp_path / "forker.log")
        for _ in range(50):
            if len(_netns_pids(netns)) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(_netns_pids(netns)) >= 2  # sh and its sleeps
        assert os.getpgid(proc.pid) == proc.pid  # leads its own process group
        assert procs.exited() == []
    assert proc.returncode == -15  # SIGTERM
    assert await _gone(netns) == []


@pytest.mark.netns
async def test_sigkill_after_grace_when_sigterm_is_ignored(topo: Topology, tmp_path) -> None:
    netns = topo.sites["bucharest"].netns
    proc = await start_in_netns("stubborn", netns,
                                ["sh", "-c", "trap '' TERM; echo ready; sleep 300 & wait"],
                                tmp_path / "stubborn.log")
    for _ in range(50):
        if "ready" in proc.log_tail():
            break
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    code = await proc.stop(grace=0.5)
    assert code == -9
    assert 0.5 <= loop.time() - t0 < 3.0
    assert await _gone(netns) == []
    assert await proc.stop() == -9  # idempotent
