"""Issue 9's pre-authentication attack against two real `qkd-gateway run` daemons.

The lab of tests/e2e/lab.py (two sites in network namespaces on a bridged WAN, the embedded KME
network over mutual TLS, real WireGuard). An attacker on the WAN (50 addresses on the bridge)
runs bench/attack_preauth.py against BOTH gateways' peer port: 200 idle connections each and
four tasks replaying a genuine captured Hello as fast as they can. Meanwhile the real peers keep
rotating, re-establish after a daemon is SIGKILLed and restarted, end with equal PSKs (`wg
show`), and each daemon's on-CPU time stays bounded (measured from /proc, printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.demo.netns import run_ip
from tests.e2e.lab import Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(400)]

NAMES = ("bucharest", "cluj-napoca")
ATTACK = Path(__file__).resolve().parents[2] / "bench" / "attack_preauth.py"
SOURCES = "198.18.0.100-149"  # the attacker's addresses on the WAN (outside the lab's hosts)
WINDOW = 10.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_share(lab: Lab, seconds: float) -> dict[str, float]:
    pids = {n: lab.daemons[n].pid for n in NAMES}
    before, t0 = {n: cpu_seconds(p) for n, p in pids.items()}, time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {n: round((cpu_seconds(p) - before[n]) / elapsed, 4) for n, p in pids.items()}


def _stop(proc: subprocess.Popen[str]) -> dict[str, object]:
    """End an attacker (closing its stdin); its last stdout line holds its statistics."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)
    lines = proc.stdout.read().strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


async def test_real_peers_establish_and_rotate_under_a_preauth_flood(tmp_path: Path) -> None:
    async with Lab(rekey_interval=2, reject_after=8) as lab:
        wan = lab.topo.wan_netns
        for host in range(100, 150):  # the attacker sits on the WAN bridge itself
            run_ip("-n", wan, "addr", "add", f"198.18.0.{host}/24", "dev", "br0")
        await lab.start_daemons()
        await lab.wait_for(lambda: all(len(lab.epochs(n)) >= 2 for n in NAMES), 40,
                           "the first rotations")
        baseline = await cpu_share(lab, WINDOW)

        attackers = []
        for site in lab.plan.sites:
            peer = lab.other(site)
            hello = lab.root / f"hello-to-{site.name}.bin"  # a genuine captured Hello
            subprocess.run([sys.executable, str(ATTACK), "mint-hello", "--keys",
                            str(peer.directory), "--from", peer.sae_id, "--to", site.sae_id,
                            "--out", str(hello)], check=True, timeout=60)
            attackers.append(subprocess.Popen(
                ["ip", "netns", "exec", wan, sys.executable, str(ATTACK), "attack", "--target",
                 f"{site.wan.ip}:7447", "--idle", "200", "--replayers", "4", "--duration",
                 "300", "--hello", str(hello), "--sources", SOURCES, "--stop-on-eof"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(tmp_path / f"attack-{site.name}.err").open("w"),
                text=True))
        try:
            await asyncio.sleep(3.0)  # the idle connections are in place
            rotations = {n: len(lab.epochs(n)) for n in NAMES}
            attacked = await cpu_share(lab, WINDOW)
            for n in NAMES:  # rotation goes on: every 2 s, at least half of them in 10 s
                assert len(lab.epochs(n)) >= rotations[n] + WINDOW / 2 / 2, (n, rotations)

            # A forced reconnect under attack: the restarted daemon must get back in.
            lab.kill_daemon(NAMES[1])
            await asyncio.sleep(1.0)
            before = len(lab.epochs(NAMES[1]))
            t0 = time.monotonic()
            await lab.start_daemon(NAMES[1])
            await lab.wait_for(lambda: len(lab.epochs(NAMES[1])) >= before + 2, 60,
                               "rotations after the restart, under attack")
            reconnect_s = time.monotonic() - t0
            await lab.wait_for(lambda: lab.psk(NAMES[0]) == lab.psk(NAMES[1]), 10, "equal PSKs")
        finally:
            stats = [_stop(proc) for proc in attackers]
    errs = {p.name: p.read_text()[-1500:] for p in tmp_path.glob("attack-*.err")}
    figures = {"cpu_share_baseline": baseline, "cpu_share_under_attack": attacked,
               "restart_to_two_rotations_s": round(reconnect_s, 1), "attackers": stats,
               "attacker_errors": {k: v for k, v in errs.items() if v}}
    print(json.dumps(figures))
    assert all(s.get("idle_held_max", 0) >= 150 for s in stats), stats  # the attack was real
    # The captured Hello got one expensive reply from each gateway that had not seen it (and
    # again from the restarted one, whose replay memory is new): never more.
    assert [s.get("replies") for s in stats] in ([1, 2], [0, 1], [1, 1], [0, 2]), stats
    for n in NAMES:
        # Bounded: a refused connection costs an accept and a reset, a replayed Hello a decode
        # and a lookup; measured ~0.1-0.2 of a core (docs/security.md). 0.6 leaves room for a
        # loaded CI machine without letting a saturated event loop pass.
        assert attacked[n] < 0.6, figures
