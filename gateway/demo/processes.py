"""Processes of the lab, each inside a network namespace, each in its own process group.

``ip netns exec NS ARGV`` execs ARGV in place, so the child we start *is* the program. It gets
a new session (and so a process group of its own): stopping it signals the whole group, and
helpers it spawned (wireguard-go, say) go with it. Output (stdout and stderr) goes to one log
file per process in the run's directory, so the demo can read the daemons' JSON log lines and
the operator can read everything after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from gateway.demo.errors import LabProcessError

__all__ = ["LabProcess", "ProcessSet", "gateway_argv", "start_in_netns"]

# A daemon shutting down cleanly (tunnels torn down, state flushed) needs about a second; after
# this long it is hung, and SIGKILL is the only way to keep the teardown promise.
STOP_GRACE_S = 5.0
_KILL_WAIT_S = 2.0


def gateway_argv(subcommand: str, *args: str) -> list[str]:
    """``python -m gateway SUBCOMMAND ARGS`` with this interpreter (the venv's): the lab runs
    the very code it was started from, whatever is on PATH."""
    return [sys.executable, "-m", "gateway", subcommand, *args]


class LabProcess:
    """A started process; ``await stop()`` ends it (and its process group)."""

    def __init__(self, name: str, netns: str, argv: Sequence[str], log_path: Path,
                 proc: asyncio.subprocess.Process) -> None:
        self.name, self.netns, self.argv, self.log_path = name, netns, list(argv), log_path
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def running(self) -> bool:
        return self._proc.returncode is None

    def log_tail(self, lines: int = 10) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait(self, timeout: float) -> int | None:
        """The exit code if it exits within ``timeout`` seconds, else None."""
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            return None

    def _signal_group(self, sig: signal.Signals) -> None:
        # The child leads its own group (start_new_session), so its pid is the group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit code
        (negative: killed by that signal). Idempotent."""
        if self._proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            if await self.wait(grace) is None:
                self._signal_group(signal.SIGKILL)
                await self.wait(_KILL_WAIT_S)
        # Helpers that outlived the leader are still in the group: nothing may survive.
        self._signal_group(signal.SIGKILL)
        return self._proc.returncode

    def __repr__(self) -> str:
        return f"LabProcess({self.name!r}, netns={self.netns!r}, pid={self.pid})"


async def start_in_netns(
    name: str,
    netns: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> LabProcess:
    """Start ``argv`` inside namespace ``netns``; output to ``log_path`` (created, appended)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, env=full_env,
        )
    except OSError as exc:
        raise LabProcessError(f"cannot start {name} ({argv[0]}): {exc}") from None
    finally:
        os.close(log)  # the child holds its own copy
    return LabProcess(name, netns, argv, log_path, proc)


class ProcessSet:
    """The lab's processes; ``async with`` stops them all on exit."""

    def __init__(self) -> None:
        self.processes: list[LabProcess] = []

    async def start(self, name: str, netns: str, argv: Sequence[str], log_path: Path,
                    env: Mapping[str, str] | None = None) -> LabProcess:
        proc = await start_in_netns(name, netns, argv, log_path, env)
        self.processes.append(proc)
        return proc

    def exited(self) -> list[LabProcess]:
        """Processes that ended on their own (a crashed daemon, a KME network that failed)."""
        return [p for p in self.processes if not p.running()]

    async def stop_all(self) -> None:
        # All at once: a hung daemon must not make the others wait out its grace period.
        await asyncio.gather(*(proc.stop() for proc in self.processes))

    async def __aenter__(self) -> ProcessSet:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.shield(self.stop_all())
