"""KMS faults on real processes: the KME network misbehaves while two real daemons rotate real
WireGuard PSKs under a 20/s pinger. Policy qkd+pqc: a tunnel that cannot get QKD keys fails
closed at reject_after (traffic stops) and recovers by itself once the KMS is healthy.

Every scenario ends with the standing checks (tests/faults/harness.py): no epoch or QKD key ID
used twice at either end, equal PSKs at both ends as `wg show` reports them, rotations resumed.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import NAMES, FaultLab, blocked, flowing, ping_window

pytestmark = [pytest.mark.netns, pytest.mark.timeout(420)]

# Short timers: rotations every 2 s, fail closed 6 s after the last good key; KMS requests give
# up after 1 s so that "slow beyond the timeout" is 3 s of latency.
FAST_KMS = {"timeouts": {"connect": "1s", "request": "1s"},
            "pool": {"target": 4, "batch": 2, "low_water": 1}}


async def fail_closed_then_recover(lab: FaultLab, what: str, fault: dict[str, object],
                                   other: dict[str, object] | None = None) -> None:
    """Apply ``fault`` to both KMEs (or ``fault`` to site 0's, ``other`` to site 1's): both ends
    fail closed (traffic stops); clear it: traffic and rotations resume on equal keys."""
    async with ping_window(lab) as stats:
        await flowing(lab, stats)
        closed = {n: lab.closed_count(n) for n in NAMES}
        if other is None:
            await lab.kms_faults(**fault)
        else:
            await lab.kms_faults(NAMES[0], **fault)
            await lab.kms_faults(NAMES[1], **other)
        for n in NAMES:
            await lab.wait_closed(n, closed[n], 40, f"{n} to fail closed ({what})")
        assert await blocked(stats), f"traffic still flows after failing closed ({what})"
        await lab.kms_clear()
        await lab.converge(2, 60, what)
        await flowing(lab, stats, 20, 60)


async def test_kms_slow_failing_and_down() -> None:
    """Slow within the timeout (carries on); slow beyond it, answering 503, dropping every
    connection, a KME's port closed: fail closed, then recover."""
    async with FaultLab(rekey_interval=2, reject_after=6, kms=FAST_KMS) as lab:
        await lab.start_daemons()
        await lab.converge(2, 40, "start")

        # Slow but within the 1 s request timeout: rotations carry on, no failure.
        closed = {n: lab.closed_count(n) for n in NAMES}
        await lab.kms_faults(latency=0.3)
        async with ping_window(lab) as stats:
            await lab.converge(3, 40, "0.3 s KMS latency")
            assert {n: lab.closed_count(n) for n in NAMES} == closed
        assert stats.lost <= 2, stats
        await lab.kms_clear()

        await fail_closed_then_recover(lab, "KMS latency 3 s > 1 s timeout", {"latency": 3.0})
        # Site 0's KME answers 503 to everything while site 1's drops every connection.
        await fail_closed_then_recover(lab, "KMS answering 503 / dropping connections",
                                       {"error_503_rate": 1.0}, {"drop_rate": 1.0})

        # A KME process gone (port closed, connections refused) at one site only.
        async with ping_window(lab) as stats:
            await flowing(lab, stats)
            closed = {n: lab.closed_count(n) for n in NAMES}
            await lab.kms_op("stop", kme=lab.kme(NAMES[1]))
            await lab.wait_closed(NAMES[1], closed[NAMES[1]], 40, "fail closed (KME down)")
            assert await blocked(stats), "traffic still flows with a KME down"
            await lab.kms_op("start", kme=lab.kme(NAMES[1]))
            await lab.converge(2, 60, "the KME restarted")
            await flowing(lab, stats, 20, 60)


async def test_kms_key_store_lost_unknown_ids_and_exhausted() -> None:
    """Key IDs unknown at the slave's KME, the KMS restarted over a new key store, the link
    exhausted (no refill): fail closed, never a key used twice; recover when keys are back."""
    async with FaultLab(rekey_interval=2, reject_after=6, kms=FAST_KMS) as lab:
        await lab.start_daemons()
        await lab.converge(2, 40, "start")

        # Every parked key forgotten by both KMEs: the master's prefetched keys are now unknown
        # at the slave's KME. The daemons must discard them, take fresh ones and carry on.
        async with ping_window(lab) as stats:
            await flowing(lab, stats)
            for n in NAMES:
                await lab.kms_op("forget", kme=lab.kme(n))
            await lab.converge(2, 60, "key IDs unknown at the slave's KME")
            await flowing(lab, stats, 20, 60)

        # The KMS reinstalled: every KME restarts over an empty store (pools refilled).
        async with ping_window(lab) as stats:
            await lab.kms_op("new_store")
            await lab.converge(2, 60, "a new key store")
            await flowing(lab, stats, 20, 60)

        # Exhausted: the link keeps 0 keys and never refills.
        async with ping_window(lab) as stats:
            await flowing(lab, stats)
            closed = {n: lab.closed_count(n) for n in NAMES}
            await lab.kms_op("drain", kme_a=lab.kme(NAMES[0]), kme_b=lab.kme(NAMES[1]), keep=0)
            for n in NAMES:
                await lab.wait_closed(n, closed[n], 60, f"{n} to fail closed (exhausted)")
            assert await blocked(stats), "traffic flows with the QKD link exhausted"
            lab.check_keys()
            await lab.kms_op("new_store")
            await lab.converge(2, 60, "keys back on the link")
            await flowing(lab, stats, 20, 60)


async def test_kme_certificate_rotated_expired_or_naming_another_kme() -> None:
    """The KME's server certificate: reissued by the same CA for the same ID (carries on);
    expired, or naming another KME ID (fail closed); valid again (recovers)."""
    async with FaultLab(rekey_interval=2, reject_after=6, kms=FAST_KMS) as lab:
        await lab.start_daemons()
        await lab.converge(2, 40, "start")
        closed = {n: lab.closed_count(n) for n in NAMES}
        for n in NAMES:
            await lab.kms_op("cert", kme=lab.kme(n), kind="rotated")
        async with ping_window(lab) as stats:
            await lab.converge(3, 40, "a rotated KME certificate")
        assert {n: lab.closed_count(n) for n in NAMES} == closed, "rotation made a tunnel close"
        assert stats.lost <= 2, stats

        for kind in ("expired", "other_id"):
            async with ping_window(lab) as stats:
                await flowing(lab, stats)
                closed = {n: lab.closed_count(n) for n in NAMES}
                for n in NAMES:
                    await lab.kms_op("cert", kme=lab.kme(n), kind=kind)
                for n in NAMES:
                    await lab.wait_closed(n, closed[n], 40, f"{n} to fail closed ({kind})")
                assert await blocked(stats), f"traffic flows with a KME certificate {kind}"
                for n in NAMES:
                    await lab.kms_op("cert", kme=lab.kme(n), kind="rotated")
                await lab.converge(2, 60, f"a valid certificate after {kind}")
                await flowing(lab, stats, 20, 60)
