"""Wall-clock faults: one daemon's wall clock jumps forward an hour and back four minutes while
the other site runs 90 s ahead (skew). Key lifetimes run on CLOCK_BOOTTIME, so none of this may
change anything: no tunnel fails closed, rotations carry on, keys stay equal and unique.

The clocks are moved with libfaketime (Debian `faketime`) through an offset file the test
rewrites; CLOCK_MONOTONIC/BOOTTIME are left alone (FAKETIME_DONT_FAKE_MONOTONIC=1), as a real
`date -s` leaves them. The backward jump stays within the lab certificates' 5 minutes of
not-before slack: TLS validity is wall-clock by nature, and the lab CA is minted at start-up.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.faults.harness import LIBFAKETIME, NAMES, FaultLab, flowing, ping_window

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def faketime_env(offset_file: Path, offset: str) -> dict[str, str]:
    offset_file.write_text(offset + "\n")
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(offset_file),
            "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.mark.skipif(not Path(LIBFAKETIME).exists(), reason="needs Debian's faketime")
async def test_wall_clock_jumps_and_skew_change_nothing() -> None:
    async with FaultLab(rekey_interval=2, reject_after=6) as lab:
        jumpy = lab.root / "clock-a"
        lab.daemon_env[NAMES[0]] = faketime_env(jumpy, "+0")
        lab.daemon_env[NAMES[1]] = faketime_env(lab.root / "clock-b", "+90")  # skewed site
        await lab.start_daemons()
        await lab.converge(2, 40, "start with 90 s skew between the sites")
        closed = {n: lab.closed_count(n) for n in NAMES}
        async with ping_window(lab) as stats:
            await flowing(lab, stats)
            for offset, what in (("+3600", "a jump forward of 1 h"),
                                 ("-240", "a jump back of 4 min"),
                                 ("+0", "the clock set right")):
                jumpy.write_text(offset + "\n")
                await asyncio.sleep(1.5)  # libfaketime re-reads the file every second
                await lab.converge(3, 40, what)
                assert {n: lab.closed_count(n) for n in NAMES} == closed, what
                await flowing(lab, stats, 10, 20)
            # The fault was real: site 0 logged rotations an hour ahead, site 1 90 s ahead.
            stamps = {n: [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
                          .timestamp() - time.time() for e in lab.rekeyed(n)] for n in NAMES}
            assert max(stamps[NAMES[0]]) > 3000, "the jump forward did not reach the daemon"
            assert min(stamps[NAMES[0]]) < -180, "the jump back did not reach the daemon"
            assert all(60 < s < 120 for s in stamps[NAMES[1]][-3:]), stamps[NAMES[1]][-3:]
        assert stats.lost <= 3, stats
