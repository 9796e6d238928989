"""One tunnel's key lifetime: install, remember, and fail closed at ``reject_after``.

The keeper owns the rule operators care most about: a tunnel never carries traffic under a key
older than ``reject_after``. Every successful rotation pushes the deadline forward; when it passes
with no new key (KMS down, peer unreachable, policy not met), the keeper installs a fresh random
key that the peer cannot know, so traffic stops instead of continuing under a stale or weaker key,
and raises the ``tunnel_key_expired`` alarm. The next successful rotation clears it.

Installing a new key does not interrupt traffic: WireGuard keeps its running session and mixes
the new PSK into its next handshake (at the latest REKEY_AFTER_TIME, 120 s, after the previous
one). Failing closed does interrupt it, on purpose: the session is ended with the random key.

A restarted daemon resumes from the state directory: if the last activation is younger than
``reject_after``, the key still installed in the data plane is left alone (no flap); otherwise the
tunnel starts closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.daemon.state import StateStore, TunnelState
from gateway.keymaterial import Secret

__all__ = ["KeyInstaller", "TunnelKeeper"]

ALARM_EXPIRED = "tunnel_key_expired"


class KeyInstaller(Protocol):
    """What the keeper needs from a data plane for one tunnel."""

    async def prepare(self) -> None:
        """Create or adopt the tunnel (interface, peers, routes); leave any installed key."""
        ...

    async def install(self, key: Secret, *, drop_session: bool = False) -> None:
        """Install ``key`` and confirm by reading it back; raise if it did not apply.

        ``drop_session``: also end the data plane's current session, so that traffic stops now
        instead of running on until the data plane's next own handshake (fail closed).
        """
        ...

    async def close(self, teardown: bool) -> None:
        """Daemon shutdown: remove the tunnel when ``teardown``, else leave it on its key."""
        ...


class Emit(Protocol):
    def __call__(self, event: str, **fields: Any) -> None: ...


class Alarm(Protocol):
    def __call__(self, name: str, active: bool, **fields: Any) -> object: ...


class TunnelKeeper:
    def __init__(
        self,
        name: str,
        reject_after: float,
        installer: KeyInstaller,
        store: StateStore,
        emit: Emit,
        alarm: Alarm,
        key_length: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._reject_after = reject_after
        self._installer = installer
        self._store = store
        self._emit = emit
        self._alarm = alarm
        self._key_length = key_length
        self._clock = clock
        self._state: TunnelState | None = None
        self._deadline = 0.0
        self._closed = True
        self._changed = asyncio.Event()

    # -- facts for status and the scheduler ---------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._state.epoch if self._state else 0

    @property
    def closed(self) -> bool:
        """True while the tunnel is failed closed (a random key is installed)."""
        return self._closed

    @property
    def deadline(self) -> float:
        return self._deadline

    def status(self) -> dict[str, Any]:
        now = self._clock()
        st = self._state
        return {
            "epoch": self.epoch,
            "closed": self._closed,
            "key_age_s": round(now - st.activated_at, 1) if st and not self._closed else None,
            "expires_in_s": round(self._deadline - now, 1) if not self._closed else None,
            "key_ids": list(st.key_ids) if st else [],
            "achieved": st.achieved if st else "",
        }

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self._installer.prepare()
        self._state = self._store.load(self.name)
        now = self._clock()
        if self._state is not None and now - self._state.activated_at < self._reject_after:
            self._deadline = self._state.activated_at + self._reject_after
            self._closed = False
            self._emit("tunnel_resumed", tunnel=self.name, epoch=self._state.epoch,
                       expires_in_s=round(self._deadline - now, 1))
        else:
            await self._fail_closed("no valid key at start")

    async def activate(self, epoch: int, key: Secret, key_ids: tuple[str, ...],
                       policy: str, achieved: str, rekey_s: float | None = None) -> None:
        """Install the key of a completed rekey and move the deadline forward."""
        if epoch <= self.epoch:
            raise ValueError(f"epoch {epoch} of tunnel {self.name} is not newer than {self.epoch}")
        await self._installer.install(key)
        now = self._clock()
        self._state = TunnelState(self.name, epoch, now, key_ids, policy, achieved)
        self._store.save(self._state)
        self._deadline = now + self._reject_after
        if self._closed:
            self._alarm(ALARM_EXPIRED, False, tunnel=self.name, epoch=epoch)
        self._closed = False
        self._changed.set()
        self._emit("tunnel_rekeyed", tunnel=self.name, epoch=epoch, key_ids=list(key_ids),
                   achieved=achieved,
                   rekey_ms=None if rekey_s is None else round(rekey_s * 1000, 3))

    async def watch(self) -> None:
        """Long-running task: fail closed whenever the deadline passes without a new key."""
        while True:
            self._changed.clear()
            if not self._closed:
                delay = self._deadline - self._clock()
                if delay <= 0:
                    await self._fail_closed(f"no successful rekey within {self._reject_after:g} s")
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)
            else:
                await self._changed.wait()

    async def expire(self, reason: str) -> None:
        """The protocol declared the current key expired: fail closed now (idempotent)."""
        if not self._closed:
            await self._fail_closed(reason)
            self._changed.set()

    async def close(self, teardown: bool) -> None:
        await self._installer.close(teardown)

    async def _fail_closed(self, reason: str) -> None:
        # A random key the peer cannot know, and the running session ended: WireGuard would
        # otherwise keep using the old session's keys for up to REJECT_AFTER_TIME (180 s).
        await self._installer.install(Secret.random(self._key_length), drop_session=True)
        self._closed = True
        self._alarm(ALARM_EXPIRED, True, tunnel=self.name, epoch=self.epoch, reason=reason)
        self._emit("tunnel_failed_closed", tunnel=self.name, epoch=self.epoch, reason=reason)
