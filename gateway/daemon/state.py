"""The daemon's state directory: what a restarted daemon needs to resume without a flap.

One JSON file per tunnel, ``<state_dir>/tunnels/<name>.json``, written atomically (temp file,
fsync, rename) with mode 0600 in a 0700 directory. It records epochs, QKD key IDs and times,
**never keys**: a restarted daemon cannot and must not recover key material; it resumes the epoch
counter (so epochs never repeat) and knows how long the installed key has left before
``reject_after``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["StateError", "StateStore", "TunnelState"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION = 1


class StateError(RuntimeError):
    """The state directory cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class TunnelState:
    tunnel: str
    epoch: int  # the last activated epoch
    activated_at: float  # wall-clock (time.time()) when that epoch was activated
    key_ids: tuple[str, ...] = field(default=())  # QKD key IDs that went into it (already spent)
    policy: str = ""
    achieved: str = ""  # which inputs actually went into the key, e.g. "qkd+pqc"


class StateStore:
    def __init__(self, directory: Path) -> None:
        self._dir = directory / "tunnels"

    def prepare(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self._dir.parent, 0o700)
            os.chmod(self._dir, 0o700)
        except OSError as exc:
            raise StateError(
                f"cannot create state directory {self._dir}: {exc.strerror}; "
                "set state_dir to a writable directory (systemd: StateDirectory=)"
            ) from None

    def _path(self, tunnel: str) -> Path:
        if not _NAME.match(tunnel):
            raise StateError(f"tunnel name {tunnel!r} cannot be used as a file name")
        return self._dir / f"{tunnel}.json"

    def load(self, tunnel: str) -> TunnelState | None:
        path = self._path(tunnel)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(
                f"state file {path} is unreadable ({exc}); remove it to start over"
            ) from None
        try:
            if raw.pop("version") != _VERSION:
                raise ValueError("unknown version")
            raw["key_ids"] = tuple(raw.get("key_ids", ()))
            state = TunnelState(**raw)
            if state.tunnel != tunnel or not isinstance(state.epoch, int) or state.epoch < 0:
                raise ValueError("inconsistent")
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"state file {path} is malformed ({exc}); remove it to start over"
            ) from None
        return state

    def save(self, state: TunnelState) -> None:
        path = self._path(state.tunnel)
        data = json.dumps({"version": _VERSION, **asdict(state)}, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
