"""The hub benchmark (bench/fullstack/hub.py) at small scale, so that the tool cannot rot: its
one command runs a real wireguard-go hub pair and the recorded pair, and reports every figure;
the PSKs match per tunnel at both ends, pings pass through the real tunnels, and nothing it
started is left behind. No timing is asserted (performance is the bench's output, not a test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.fullstack.hub import main

pytestmark = [pytest.mark.netns, pytest.mark.timeout(900)]

TUNNELS = 8
FIGURES = ("rekeys_per_s", "cpu_ms_per_rekey", "cpu_ms_per_rekey_daemons",
           "cpu_ms_per_rekey_kms", "rekey_ms_p50", "rekey_ms_p99")


def _leftovers(prefix: str) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           timeout=10).stdout.split()
    socks = [p.name for p in Path("/var/run/wireguard").glob(f"{prefix}*")]
    procs = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and argv[0].endswith(b"wireguard-go") and argv[1].startswith(
                prefix.encode()):
            procs.append(argv[1].decode())
    return [n for n in netns if n.startswith(prefix)] + socks + procs


@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go")
def test_hub_bench_reports_its_figures_with_matching_psks(tmp_path: Path) -> None:
    out = tmp_path / "hub.json"
    # The lab prefixes of this process are qgd<pid><letter>.
    prefix = f"qgd{os.getpid()}"
    rc = main(["--tunnels", str(TUNNELS), "--window", "3", "--real", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0, result
    (pair,) = result["pairs"]
    hub, rec = pair["hub"], pair["record"]
    for run in (hub, rec):
        assert run["tunnels"] == TUNNELS
        assert run["rekeys"] > 0, run
        for key in FIGURES:
            assert run[key] is not None and run[key] > 0, (key, run)
        for proc in ("alpha", "beta", "kms"):
            assert run["rss_mb"][proc] > 0 and run["fds"][proc] > 0, run
    assert rec["data_plane"] == "record"
    assert hub["data_plane"] == "userspace"
    # Three wireguard-go processes: the two hubs and beta's one spoke; their CPU is counted.
    wg = [k for k in hub["cpu_ms"] if k.startswith("wg-")]
    assert len(wg) == 3, hub["cpu_ms"]
    assert hub["cpu_ms_per_rekey_wireguard_go"] is not None
    # Every tunnel's PSK read back equal at both ends, each tunnel its own key.
    assert hub["psk"]["tunnels_equal"] == TUNNELS, hub["psk"]
    assert hub["psk"]["distinct_keys_at_alpha_hub"] == TUNNELS, hub["psk"]
    # Packets through both real tunnels (loss is a figure, not a verdict, on a loaded machine).
    assert set(hub["ping"]["per_tunnel"]) == {"t1", "t2"}
    assert all(v["received"] > 0 for v in hub["ping"]["per_tunnel"].values()), hub["ping"]
    assert set(pair["ratio_hub_over_record"]) >= {"rekeys_per_s", "cpu_ms_per_rekey"}
    assert all(v is not None for v in pair["ratio_hub_over_record"].values()), pair
    # Nothing left behind: namespaces, wireguard-go processes, UAPI sockets.
    assert _leftovers(prefix) == []
