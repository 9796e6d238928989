"""The state directory full (a 256 KiB tmpfs filled up) or read-only, under a running daemon.

A key whose record cannot be written is a key the fail-safe cannot account for. The daemon must
keep running, say why in its log (naming the state directory's error), never reuse a key, and
recover by itself once the directory is writable again.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from tests.faults.harness import NAMES, FaultLab, flowing, ping_window

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True, timeout=10)


def fill(directory: Path) -> None:
    """Fill the file system holding ``directory`` until ENOSPC."""
    with contextlib.suppress(OSError), (directory / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def errors_since(lab: FaultLab, name: str, mark: int) -> list[dict[str, object]]:
    lines = lab.plan.by_name[name].log_path.read_text(errors="replace").splitlines()[mark:]
    return [{"line": ln} for ln in lines if '"level": "error"' in ln or "Errno" in ln]


def log_len(lab: FaultLab, name: str) -> int:
    return len(lab.plan.by_name[name].log_path.read_text(errors="replace").splitlines())


async def test_state_dir_full_then_read_only() -> None:
    async with FaultLab(rekey_interval=2, reject_after=6) as lab:
        state = lab.plan.by_name[NAMES[1]].directory / "state"
        mount("-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(state))
        try:
            await lab.start_daemons()
            await lab.converge(2, 40, "start")
            async with ping_window(lab) as stats:
                await flowing(lab, stats)
                for what, fault, fix in (
                    ("state dir full", lambda: fill(state),
                     lambda: (state / "filler").unlink()),
                    ("state dir read-only", lambda: mount("-o", "remount,ro", str(state)),
                     lambda: mount("-o", "remount,rw", str(state))),
                ):
                    mark = log_len(lab, NAMES[1])
                    epochs = len(lab.epochs(NAMES[1]))
                    fault()
                    # Give the daemon three rotation intervals and more than reject_after.
                    await lab.wait_for(lambda m=mark: errors_since(lab, NAMES[1], m), 30,
                                       f"an error naming the cause ({what})")
                    import asyncio
                    await asyncio.sleep(8)
                    assert lab.daemons[NAMES[1]].running(), lab.daemons[NAMES[1]].log_tail(20)
                    text = "\n".join(str(e["line"]) for e in errors_since(lab, NAMES[1], mark))
                    assert "state" in text, text[-2000:]
                    during = len(lab.epochs(NAMES[1])) - epochs
                    lab.check_keys()
                    fix()
                    await lab.converge(2, 60, f"{what} fixed")
                    await flowing(lab, stats, 20, 60)
                    print(f"{what}: {during} rotations recorded during the fault")
        finally:
            for proc in lab.daemons.values():
                await proc.stop()
            subprocess.run(["umount", "-l", str(state)], capture_output=True, check=False)
