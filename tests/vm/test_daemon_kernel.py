"""The two-site daemon scenario on kernel WireGuard (pyroute2 netlink), inside the kernel lab.

Same harness as tests/e2e (real `qkd-gateway run` processes, the embedded KME network, a 20/s
pinger); in the guest the lab detects kernel WireGuard, so the daemons use the netlink backend.
Everything runs 5-10x slower under QEMU TCG: intervals are longer than on the host.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.lab import Lab

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]

NAMES = ("bucharest", "cluj-napoca")


async def test_kernel_wireguard_rotates_and_survives_a_sigkilled_daemon() -> None:
    interval = 6.0
    # reject_after covers a daemon restart under emulation (Python start-up takes ~90 s there).
    async with Lab(rekey_interval=interval, reject_after=300, kms_deadline=180) as lab:
        assert lab.plan.backend == "kernel", "the kernel lab must use kernel WireGuard"
        await lab.start_daemons()
        await lab.wait_for(lambda: all(lab.epochs(n) for n in NAMES), 180, "the first rekey")
        pinger = lab.pinger()
        ping = asyncio.create_task(pinger.run())
        await lab.wait_for(lambda: len(lab.epochs(NAMES[1])) >= 3, 120, "three rotations")
        assert lab.events(NAMES[0], "daemon_starting")[0]["backends"] == {"kernel": "kernel"}
        # Killed once its last activation is on disk, it must resume (a kill between an
        # activation and its commit must start closed instead: check_restart_start).
        await lab.wait_state_committed(NAMES[1], 60)
        recorded, logged = await lab.kill_and_read_state(NAMES[1])
        before = len(lab.epochs(NAMES[1]))
        await lab.start_daemon(NAMES[1])
        await lab.wait_for(lambda: len(lab.epochs(NAMES[1])) >= before + 2, 180,
                           "rotations after the restart")
        pinger.stop()
        stats = await ping
        assert lab.psk(NAMES[0]) == lab.psk(NAMES[1]) != "(none)"
        lab.check_restart_start(NAMES[1], recorded, logged)
    assert stats.received > 0
    assert stats.lost <= 20 * interval, stats
