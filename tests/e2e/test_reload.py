"""Live reload and `qkd-gateway rekey` on real daemons (SIGHUP, as `systemctl reload` sends it).

A hub and three spokes. The hub starts with tunnels to spokes 1 and 3; the reload adds spoke 2's
and removes spoke 3's. Tunnel 1 must keep its exact PSK and epoch (`wg show`), tunnel 2 must come
up keyed at both ends, tunnel 3 must be gone from the hub. A broken file changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.lab import Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

# Long enough that no scheduled rotation falls inside the test's windows, even on a loaded
# machine (a jittered 60 s interval did fall inside once).
INTERVAL, REJECT = 600.0, 1200.0


def edit(path: Path, keep: Any) -> str:
    """Keep the tunnels (and their peers) for which ``keep(tunnel)`` is true; returns the old
    text so the test can put it back."""
    text = path.read_text()
    cfg = yaml.safe_load(text)
    cfg["tunnels"] = [t for t in cfg["tunnels"] if keep(t)]
    peers = {t["peer"] for t in cfg["tunnels"]}
    cfg["peers"] = [p for p in cfg["peers"] if p["name"] in peers]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return text


def status(lab: Lab, site: str) -> dict[str, Any]:
    # By socket: while the file is broken, --config could not name it.
    sock = lab.plan.by_name[site].directory / "control.sock"
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "--socket", str(sock),
                          "--json"], capture_output=True, text=True, timeout=30, check=True)
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def cli(lab: Lab, site: str, *argv: str) -> subprocess.CompletedProcess[str]:
    cfg = lab.plan.by_name[site].config_path
    return subprocess.run([sys.executable, "-m", "gateway", *argv, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)


async def test_reload_adds_and_removes_tunnels_and_leaves_the_others_alone() -> None:
    async with Lab(rekey_interval=INTERVAL, reject_after=REJECT, sites=4) as lab:
        t1, t2, t3 = lab.plan.tunnels
        hub = t1.hub
        hub_cfg = lab.plan.by_name[hub].config_path
        full = edit(hub_cfg, lambda t: t["name"] != t2.name)
        await lab.start_daemons()

        def keyed(t: Any) -> bool:
            a = lab.psks(hub, t.interface(hub))
            b = lab.psks(t.spoke, t.interface(t.spoke))
            return len(a) == 1 and list(a.values()) == list(b.values()) != ["(none)"]

        await lab.wait_for(lambda: keyed(t1) and keyed(t3), 60, "tunnels 1 and 3 keyed")
        psk1 = lab.psks(hub, t1.interface(hub))
        epoch1 = status(lab, hub)["tunnels"][t1.name]["epoch"]
        assert status(lab, hub)["config"]["generation"] == 1

        # A broken file: nothing changes, the failure is visible.
        hub_cfg.write_text(full + "\ntunnels: [oops\n")
        os.kill(lab.daemons[hub].pid, signal.SIGHUP)
        await lab.wait_for(lambda: bool(lab.events(hub, "config_reload_failed")), 30,
                           "the refused reload")
        st = status(lab, hub)
        assert st["config"]["generation"] == 1 and "config_invalid" in st["alarms"]
        assert set(st["tunnels"]) == {t1.name, t3.name}

        # The real change: tunnel 2 in, tunnel 3 out.
        hub_cfg.write_text(full)
        edit(hub_cfg, lambda t: t["name"] != t3.name)
        os.kill(lab.daemons[hub].pid, signal.SIGHUP)
        await lab.wait_for(lambda: bool(lab.events(hub, "config_reloaded")), 30, "the reload")
        ev = lab.events(hub, "config_reloaded")[-1]
        assert (ev["added"], ev["removed"], ev["unchanged"]) == ([t2.name], [t3.name],
                                                                 [t1.name])
        await lab.wait_for(lambda: keyed(t2), 60, "tunnel 2 keyed at both ends")
        # The added tunnel's keeper and pool existed before the core knew the tunnel: no
        # exchange can have activated a key the data plane never got.
        assert not lab.events(hub, "activate_without_keys")
        st = status(lab, hub)
        assert st["config"]["generation"] == 2 and "config_invalid" not in st["alarms"]
        assert set(st["tunnels"]) == {t1.name, t2.name}
        # Untouched: the same PSK in WireGuard, the same epoch in the daemon.
        assert lab.psks(hub, t1.interface(hub)) == psk1
        assert st["tunnels"][t1.name]["epoch"] == epoch1
        # Removed: the hub's interface for tunnel 3 is gone (on_shutdown: teardown in the lab).
        gone = subprocess.run(["ip", "-n", lab.plan.by_name[hub].netns, "link", "show",
                               t3.interface(hub)], capture_output=True)
        assert gone.returncode != 0

        # `qkd-gateway rekey`: a new epoch now, not in INTERVAL seconds.
        done = cli(lab, hub, "rekey", t1.name)
        assert done.returncode == 0, done.stderr
        await lab.wait_for(lambda: status(lab, hub)["tunnels"][t1.name]["epoch"] > epoch1, 30,
                           "the forced rekey")
        await lab.wait_for(lambda: keyed(t1) and lab.psks(hub, t1.interface(hub)) != psk1, 20,
                           "a new, equal PSK at both ends")
        refused = cli(lab, hub, "rekey", "no-such-tunnel")
        assert refused.returncode == 1 and "no tunnel" in refused.stderr
