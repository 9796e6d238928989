"""Fixtures of the demo lab tests: a two-site topology, and a check that nothing was left."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.demo import Topology


def leftovers(prefix: str) -> list[str]:
    """Everything a lab with ``prefix`` could have left: namespaces, host links, UAPI sockets,
    temp dirs, processes."""
    found = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                       check=True).stdout.split() if n.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    found += [line for line in links.splitlines() if prefix in line]
    found += [str(p) for p in Path("/var/run/wireguard").glob(f"{prefix}*")]
    found += [str(p) for p in Path(tempfile.gettempdir()).glob(f"qkd-gateway-{prefix}-*")]
    for netns in [n for n in found if not n.startswith("/")]:
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                              check=False).stdout.split()
        found += [f"pid {pid} in {netns}: {_cmdline(pid)}" for pid in pids]
    # Processes outside the namespaces that still name the lab (wireguard-go <prefix>w1h, ...).
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and prefix in _cmdline(proc.name):
            found.append(f"pid {proc.name}: {_cmdline(proc.name)}")
    return found


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


@pytest.fixture
async def topo() -> AsyncIterator[Topology]:
    async with Topology(["bucharest", "cluj-napoca"]) as t:
        yield t
    assert leftovers(t.prefix) == []
