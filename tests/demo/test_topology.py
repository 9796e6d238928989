"""The lab network: builds, connects sites and the KMS, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gateway.demo import KMS_ADDRESS, Pinger, Topology, cleanup, new_prefix, stale_prefixes
from gateway.demo.sites import site_names
from gateway.demo.topology import site_wan_address
from tests.demo.conftest import leftovers


@pytest.mark.unit
def test_addresses_and_prefix_rules() -> None:
    assert str(site_wan_address(0)) == "198.18.0.10/24"
    assert str(site_wan_address(31)) == "198.18.0.41/24"
    with pytest.raises(ValueError, match="out of range"):
        site_wan_address(32)
    # A loose prefix would match namespaces that are not the lab's: refused before any action.
    for bad in ("", "q", "qgd", "qg-a", "qgd12", "qgd12ab"):
        with pytest.raises(ValueError, match="not a lab prefix"):
            cleanup(bad)


@pytest.mark.netns
async def test_build_connect_teardown(topo: Topology) -> None:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    for suffix in ("wan", "kms", "bucharest", "cluj-napoca"):
        assert f"{topo.prefix}-{suffix}" in names
    # The host's namespace never holds a lab interface.
    assert topo.prefix not in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                             text=True, check=True).stdout
    addr = subprocess.run(["ip", "-n", topo.sites["cluj-napoca"].netns, "-o", "-4", "addr"],
                          capture_output=True, text=True, check=True).stdout
    assert "127.0.0.1/8" in addr and "198.18.0.11/24" in addr
    paths = [(topo.sites["bucharest"].netns, "198.18.0.11"),
             (topo.sites["cluj-napoca"].netns, "198.18.0.10"),
             (topo.sites["cluj-napoca"].netns, str(KMS_ADDRESS.ip)),
             (topo.kms.netns, "198.18.0.10")]
    for netns, target in paths:
        stats = await Pinger(netns, target, interval=0.01).run(count=10)
        assert (stats.sent, stats.received, stats.lost) == (10, 10, 0), (netns, target)


@pytest.mark.netns
def test_sync_context_and_unique_prefixes() -> None:
    with Topology(site_names(3)) as a, Topology(site_names(3)) as b:
        assert a.prefix != b.prefix
        assert len({a.prefix, b.prefix, new_prefix()}) == 3
        assert len(a.prefix) <= 11
    assert leftovers(a.prefix) == [] and leftovers(b.prefix) == []


@pytest.mark.netns
def test_failed_build_removes_what_it_made() -> None:
    topo = Topology(["bucharest", "iasi"])
    # Occupy the namespace name the second site needs: the build fails half-way.
    subprocess.run(["ip", "netns", "add", f"{topo.prefix}-iasi"], check=True)
    try:
        with pytest.raises(Exception, match="iasi"), topo:
            pass
    finally:
        cleanup(topo.prefix)
    assert leftovers(topo.prefix) == []


_CRASHING_RUN = textwrap.dedent("""
    import subprocess, sys
    from gateway.demo import Topology
    topo = Topology(["bucharest", "cluj-napoca"])
    topo.build()
    subprocess.Popen(["ip", "netns", "exec", topo.sites["bucharest"].netns, "sleep", "300"],
                     start_new_session=True)
    print(topo.prefix, flush=True)
    sys.stdin.read()   # held until the test SIGKILLs us: no teardown runs
""")


@pytest.mark.netns
def test_cleanup_of_a_crashed_run_by_prefix() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_RUN], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    prefix = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdout.close()
    left = leftovers(prefix)
    assert any(n == f"{prefix}-bucharest" for n in left)
    assert any("sleep 300" in line for line in left)
    assert prefix in stale_prefixes()
    removed = cleanup(prefix)
    assert f"netns {prefix}-wan" in removed
    assert leftovers(prefix) == []
    assert prefix not in stale_prefixes()
    assert cleanup(prefix) == []  # idempotent
