"""The state directory full (a 256 KiB tmpfs filled up) or read-only (a read-only tmpfs mounted
over ``state/tunnels`` inside the daemon's mount namespace), under a running daemon.

A key whose record cannot be written is a key the fail-safe cannot account for. Expected: the
daemon keeps running, says why in its log, never reuses a key, and does ONE thing with the
tunnel while the fault lasts: carry on (the keys are fresh; raise an alarm) or fail closed;
never flap between the two. It recovers by itself once the directory is writable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.daemon.commit import write_durably
from tests.faults.harness import NAMES, FaultLab, flowing, ping_window

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

FAULT_EVENTS = ("tunnel_activate_failed", "tunnel_failed_closed", "tunnel_rekeyed",
                "alarm_raised", "tunnel_install_failed")


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True, timeout=10)


def in_daemon_ns(lab: FaultLab, name: str, *argv: str) -> None:
    """Run a mount command inside the daemon's mount namespace (the host's mounts made after
    `ip netns exec` do not propagate into it: / is a private mount here)."""
    pid = lab.daemons[name].pid
    subprocess.run(["nsenter", "-t", str(pid), "-m", *argv], check=True, capture_output=True,
                   timeout=10)


def fill(directory: Path) -> None:
    """Fill the file system holding ``directory`` until ENOSPC (appending to its filler)."""
    with contextlib.suppress(OSError), (directory / "filler").open("ab") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def full(state: Path) -> None:
    """The state directory's file system full, and every record needing new space: a record
    whose spare holds its blocks is rewritten in place even on a full file system
    (gateway.daemon.commit), so the spares are deleted and the space they freed filled too."""
    fill(state)
    for spare in [*state.glob(".spare-*"), *(state / "tunnels").glob(".spare-*")]:
        spare.unlink(missing_ok=True)
    fill(state)


def log_since(lab: FaultLab, name: str, mark: int) -> str:
    return "\n".join(lab.plan.by_name[name].log_path.read_text(errors="replace")
                     .splitlines()[mark:])


def log_len(lab: FaultLab, name: str) -> int:
    return len(lab.plan.by_name[name].log_path.read_text(errors="replace").splitlines())


async def state_fault(lab: FaultLab, errtext: str, fault: Callable[[], None],
                      fix: Callable[[], None]) -> None:
    async with ping_window(lab) as stats:
        await flowing(lab, stats)
        mark = log_len(lab, NAMES[1])
        fault()
        await lab.wait_for(lambda: errtext in log_since(lab, NAMES[1], mark), 30,
                           f"an error saying {errtext!r}")
        await asyncio.sleep(7)  # past reject_after (6 s) of the last recorded key
        sent, received = stats.sent, stats.received
        await asyncio.sleep(6)
        answered = (stats.received - received) / max(1, stats.sent - sent)
        assert lab.daemons[NAMES[1]].running(), lab.daemons[NAMES[1]].log_tail(20)
        seen = [json.loads(ln).get("event") for ln in log_since(lab, NAMES[1], mark).splitlines()
                if ln.startswith("{")]
        lab.check_keys()
        fix()
        await lab.converge(2, 60, "the state directory writable again")
        await flowing(lab, stats, 20, 60)
    print(f"{errtext}: {answered:.0%} of the pings answered 7-13 s into the fault; "
          f"events: {sorted(set(FAULT_EVENTS) & set(seen))}")
    # One behaviour during the fault: carried on (>= 90 % answered) or failed closed (none).
    assert answered >= 0.9 or answered == 0, f"the tunnel flapped: {answered:.0%} answered"


async def test_state_dir_full_then_read_only() -> None:
    async with FaultLab(rekey_interval=2, reject_after=6) as lab:
        state = lab.plan.by_name[NAMES[1]].directory / "state"
        tunnels = state / "tunnels"
        mount("-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(state))
        try:
            await lab.start_daemons()
            await lab.converge(2, 40, "start")
            await state_fault(lab, "No space left on device", lambda: full(state),
                              lambda: (state / "filler").unlink())
            await state_fault(
                lab, "Read-only file system",
                lambda: in_daemon_ns(lab, NAMES[1], "mount", "-t", "tmpfs", "-o", "ro,size=64k",
                                     "tmpfs", str(tunnels)),
                lambda: in_daemon_ns(lab, NAMES[1], "umount", str(tunnels)))
        finally:
            for proc in lab.daemons.values():
                await proc.stop()
            subprocess.run(["umount", "-l", str(state)], capture_output=True, check=False)


def test_a_full_file_system_still_takes_a_record_whose_spare_holds_its_blocks(
        tmp_path: Path) -> None:
    """gateway.daemon.commit writes a record into its spare in place: on a full file system a
    file saved before (its spare allocated) is still replaced, completely; a record that needs
    new space (a new file) fails with ENOSPC and leaves nothing behind."""
    mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(tmp_path))
    try:
        old = {tmp_path / f"t{i}.json": b'{"epoch": 1}' for i in range(2)}
        write_durably(old)
        write_durably({p: b'{"epoch": 2}' for p in old})  # each file now has its spare
        fill(tmp_path)
        write_durably({p: b'{"epoch": 3}' for p in old})
        assert all(p.read_bytes() == b'{"epoch": 3}' for p in old)
        with pytest.raises(OSError) as err:
            write_durably({tmp_path / "new.json": b'{"epoch": 1}' * 400})
        assert err.value.errno == 28
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            ".spare-t0.json", ".spare-t1.json", "filler", "t0.json", "t1.json"]
    finally:
        subprocess.run(["umount", "-l", str(tmp_path)], capture_output=True, check=False)
