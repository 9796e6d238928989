"""A state directory whose disk fails: every sync of a batch raises, as a full or read-only
file system does (gateway.daemon.commit._sync_batch)."""

from __future__ import annotations

import pytest

from gateway.daemon import commit


def break_syncs(monkeypatch: pytest.MonkeyPatch, errno: int = 28,
                text: str = "No space left on device") -> None:
    """From now on (until ``monkeypatch`` is undone) every state-directory sync raises
    ``OSError(errno, text)``."""

    def broken(fds: list[int], directories: object) -> None:
        raise OSError(errno, text)

    monkeypatch.setattr(commit, "_sync_batch", broken)
