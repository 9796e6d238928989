"""One tunnel's key lifetime: install, remember, and fail closed at ``reject_after``.

The keeper owns the rule operators care most about: a tunnel never carries traffic under a key
older than ``reject_after``. Every successful rotation pushes the deadline forward; when it passes
with no new key (KMS down, peer unreachable, policy not met), the keeper installs a fresh random
key that the peer cannot know and ends the running session, so traffic stops instead of
continuing under a stale or weaker key, and raises the ``tunnel_key_expired`` alarm. The next
successful rotation clears it.

Failing closed must itself not fail open. If the random key cannot be written, the keeper takes
the interface down (``set_blocked``); if even that fails it raises ``tunnel_fail_closed_failed`` and
retries with backoff for as long as the daemon runs. Nothing here raises out of :meth:`watch`.
While the daemon does not run, ``qkd-gateway failsafe`` (a systemd timer) applies the same rule
from the state directory (gateway.daemon.failsafe).

The keeper knows the key the data plane should hold (the current QKD-derived key, or the random
one while closed). :meth:`verify` reads the data plane back and restores that key when someone
or something changed it (a peer re-added by reconciliation has an empty slot).

A restarted daemon resumes from the state directory only if the last activation happened during
this boot, less than ``reject_after`` ago on the boot clock, AND the data plane still holds the
key whose fingerprint the state recorded; otherwise the tunnel starts closed. So a resumed tunnel
never reports a key that the data plane does not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any, Protocol

from gateway.daemon.clock import BootClock, Clock
from gateway.daemon.state import StateError, StateStore, TunnelState, fingerprint
from gateway.keymaterial import Secret

__all__ = ["ALARM_CLOSE_FAILED", "ALARM_EXPIRED", "FailClosedError", "KeyInstaller",
           "TunnelKeeper", "refusal"]

ALARM_EXPIRED = "tunnel_key_expired"
ALARM_CLOSE_FAILED = "tunnel_fail_closed_failed"
#: Retry of a failed fail-closed: 1 s doubling to 30 s (the data plane is local: it either comes
#: back quickly, e.g. a restarted wireguard-go, or needs an operator, whom the alarm calls).
_RETRY_BASE, _RETRY_CAP = 1.0, 30.0


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

    async def read_key(self) -> Secret | None:
        """The key the data plane holds now (None: empty slot, or no such peer/interface)."""
        ...

    async def set_blocked(self, blocked: bool) -> None:
        """Stop all traffic of the tunnel without writing a key (take the interface down), or
        lift that again once a key could be written."""
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
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._reject_after = reject_after
        self._installer = installer
        self._store = store
        self._emit = emit
        self._alarm = alarm
        self._key_length = key_length
        self._clock = clock or BootClock()
        self._state: TunnelState | None = None
        self._key: Secret | None = None  # what the data plane should hold right now
        self._deadline = 0.0  # boot clock
        self._closed = False  # set by start(): resumed, or failed closed
        self._close_pending: str | None = None  # a fail-closed that has not succeeded yet
        self._blocked = False  # the interface was taken down by a fail-closed
        self._alarmed_close = False  # ALARM_CLOSE_FAILED is raised
        self._failures = 0
        self.keys_installed = 0  # QKD-derived keys installed by this process
        self._changed = asyncio.Event()
        # One data-plane write at a time: the watch task, an Expire from the protocol and an
        # activation must never interleave (two fail-closed writes racing each other's
        # read-back was seen when the core's Expire coincided with the deadline).
        self._write = asyncio.Lock()

    # -- facts for status and the scheduler ---------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._state.epoch if self._state else 0

    @property
    def closed(self) -> bool:
        """True while the tunnel is failed closed (a random key is installed) or failing."""
        return self._closed or self._close_pending is not None

    def clock_now(self) -> float:
        """The keeper's clock (boot clock) now: ages of ``activated`` are measured on it."""
        return self._clock.now()

    @property
    def reject_after(self) -> float:
        return self._reject_after

    @reject_after.setter
    def reject_after(self, value: float) -> None:
        """A reload changed the key lifetime: the current key's deadline follows at once."""
        if value != self._reject_after:
            self._reject_after = value
            if self._state is not None and self._state.activated_boot is not None \
                    and not self._closed:
                self._deadline = self._state.activated_boot + value
            self._changed.set()

    @property
    def deadline(self) -> float:
        """When the current key expires, on the boot clock."""
        return self._deadline

    @property
    def activated(self) -> float | None:
        """Boot-clock time of the current key's activation (None while closed)."""
        st = self._state
        return st.activated_boot if st is not None and not self.closed else None

    def status(self) -> dict[str, Any]:
        now = self._clock.now()
        st, open_ = self._state, not self.closed
        age = None if not open_ or st is None or st.activated_boot is None else \
            round(now - st.activated_boot, 1)
        return {
            "epoch": self.epoch,
            "closed": not open_,
            "key_age_s": age,
            "expires_in_s": round(self._deadline - now, 1) if open_ else None,
            "key_ids": list(st.key_ids) if st else [],
            "achieved": st.achieved if st else "",
            "activated_at": st.activated_at if st and open_ else None,
            "keys_installed": self.keys_installed,
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def _load(self) -> TunnelState | None:
        """The recorded state; an unreadable file counts as none (the tunnel then starts closed
        and the file is rewritten): a broken file must never keep a tunnel from closing."""
        try:
            return self._store.load(self.name)
        except StateError as exc:
            self._emit("tunnel_state_unreadable", level="error", tunnel=self.name,
                       error=str(exc))
            return None

    async def start(self) -> None:
        await self._installer.prepare()
        self._state = self._load()
        why = refusal(self._state, self._clock, self._reject_after)
        held: Secret | None = None
        if why is None:
            assert self._state is not None
            held = await self._installer.read_key()
            if held is None or fingerprint(self.name, self._state.epoch, held) \
                    != self._state.key_fingerprint:
                why = ("the data plane does not hold the key recorded in the state directory "
                       "(interface or peer recreated, or the slot was overwritten)")
        if why is None:
            assert self._state is not None and self._state.activated_boot is not None
            self._key, self._closed = held, False
            self._deadline = self._state.activated_boot + self._reject_after
            self._emit("tunnel_resumed", tunnel=self.name, epoch=self._state.epoch,
                       expires_in_s=round(self._deadline - self._clock.now(), 1))
        else:
            await self._fail_closed(f"no valid key at start: {why}")

    async def failsafe(self, horizon: float) -> str | None:
        """For ``qkd-gateway failsafe`` while no daemon runs: fail the tunnel closed if the state
        directory does not show a key valid for at least ``horizon`` more seconds. Returns the
        reason, or None if nothing was to be done. Never creates or reconfigures the interface
        (a missing one carries no traffic). Raises FailClosedError if nothing could be done."""
        st = self._load()
        if st is not None and st.closed:
            return None
        why = refusal(st, self._clock, self._reject_after, horizon)
        if why is None:
            return None
        self._state = st
        await self._fail_closed(f"failsafe: {why}")
        if self._close_pending is not None:
            raise FailClosedError(f"tunnel {self.name}: could neither write a random key nor "
                                  "take the interface down (see the log)")
        return why

    async def activate(self, epoch: int, key: Secret, key_ids: tuple[str, ...],
                       policy: str, achieved: str, rekey_s: float | None = None) -> None:
        """Install the key of a completed rekey and move the deadline forward.

        Raises if the data plane refused the key; the previous key (or a random one, if the
        previous one is no longer valid) is then put back, so the slot never holds an unknown
        value."""
        if epoch <= self.epoch:
            raise ValueError(f"epoch {epoch} of tunnel {self.name} is not newer than {self.epoch}")
        async with self._write:
            await self._install_new(epoch, key)
            if self._blocked:
                await self._installer.set_blocked(False)
                self._blocked = False
            now = self._clock.now()
            self._state = TunnelState(self.name, epoch, self._clock.wall(), key_ids, policy,
                                      achieved, self._clock.boot_id, now,
                                      fingerprint(self.name, epoch, key))
            self._key = key
            self._store.save(self._state)
            self._deadline = now + self._reject_after
            self.keys_installed += 1
            if self._closed or self._close_pending is not None:
                self._alarm(ALARM_EXPIRED, False, tunnel=self.name, epoch=epoch)
            if self._alarmed_close:
                self._alarm(ALARM_CLOSE_FAILED, False, tunnel=self.name)
                self._alarmed_close = False
            self._closed, self._close_pending, self._failures = False, None, 0
            self._changed.set()
            self._emit("tunnel_rekeyed", tunnel=self.name, epoch=epoch, key_ids=list(key_ids),
                       achieved=achieved,
                       rekey_ms=None if rekey_s is None else round(rekey_s * 1000, 3))

    async def _install_new(self, epoch: int, key: Secret) -> None:
        try:
            await self._installer.install(key)
        except Exception as exc:
            self._emit("tunnel_install_failed", level="error", tunnel=self.name, epoch=epoch,
                       error=str(exc))
            await self._restore()
            raise

    async def _restore(self) -> None:
        """Put back the key the slot should hold after a failed write (``_write`` held)."""
        if self._key is not None and (self._closed or self._clock.now() < self._deadline):
            with contextlib.suppress(Exception):
                await self._installer.install(self._key)
                return
        await self._fail_closed_locked("a key write failed and the previous key cannot be "
                                       "restored", rewrite=True)

    async def verify(self) -> bool:
        """Read the data plane back; restore the key it should hold if it differs (e.g. the peer
        was re-added by reconciliation with an empty slot). True if something was restored."""
        async with self._write:
            if self._close_pending is not None:
                return False  # watch() is already retrying
            held = await self._installer.read_key()
            if self._key is not None and held == self._key:
                return False
            self._emit("tunnel_key_drift", level="warning", tunnel=self.name, epoch=self.epoch,
                       slot="empty" if held is None else "another key")
            if not self._closed and self._key is not None and self._clock.now() < self._deadline:
                try:
                    await self._installer.install(self._key)
                    return True
                except Exception as exc:
                    self._emit("tunnel_install_failed", level="error", tunnel=self.name,
                               epoch=self.epoch, error=str(exc))
            await self._fail_closed_locked("the data plane lost the tunnel's key", rewrite=True)
        self._changed.set()
        return True

    async def watch(self) -> None:
        """Long-running task: fail closed whenever the deadline passes without a new key, and
        retry a fail-closed that did not succeed. Never raises."""
        while True:
            self._changed.clear()
            if self._close_pending is not None:
                delay = min(_RETRY_CAP, _RETRY_BASE * 2 ** min(self._failures - 1, 8))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)
                if self._close_pending is not None:
                    await self._fail_closed(self._close_pending)
            elif not self._closed:
                delay = self._deadline - self._clock.now()
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

    async def _fail_closed(self, reason: str, *, rewrite: bool = False) -> None:
        async with self._write:
            if self._closed and self._close_pending is None and not rewrite:
                return  # another path (watch, Expire) closed it meanwhile
            await self._fail_closed_locked(reason, rewrite=rewrite)

    async def _fail_closed_locked(self, reason: str, *, rewrite: bool = False) -> None:
        """A random key the peer cannot know, and the running session ended (WireGuard would
        otherwise keep the old session's keys for up to REJECT_AFTER_TIME, 180 s). If that
        cannot be written, the interface goes down (traffic stops) and the write is retried
        (see watch) until the old key is really gone: only then is the state marked closed. If
        even the interface cannot be taken down, the alarm says so and both are retried."""
        key = Secret.random(self._key_length)
        try:
            await self._installer.install(key, drop_session=True)
        except Exception as exc:
            self._emit("tunnel_fail_closed_error", level="error", tunnel=self.name,
                       step="random key", error=str(exc))
            self._failures += 1
            try:
                if not self._blocked:
                    await self._installer.set_blocked(True)
                    self._blocked = True
            except Exception as exc2:
                if not self._alarmed_close:
                    self._alarm(ALARM_CLOSE_FAILED, True, tunnel=self.name, reason=str(exc2))
                    self._alarmed_close = True
                self._emit("tunnel_fail_closed_error", level="error", tunnel=self.name,
                           step="interface down", error=str(exc2), retry=self._failures)
            self._close_pending = reason  # retried by watch() until the key is written
            if self._blocked and not self._closed:
                self._closed = True  # no traffic passes: closed, but not done
                self._alarm(ALARM_EXPIRED, True, tunnel=self.name, epoch=self.epoch,
                            reason=reason)
                self._emit("tunnel_failed_closed", tunnel=self.name, epoch=self.epoch,
                           reason=reason, interface_down=True)
            return
        self._key = key
        if self._alarmed_close:
            self._alarm(ALARM_CLOSE_FAILED, False, tunnel=self.name)
            self._alarmed_close = False
        was_closed = self._closed
        self._closed, self._close_pending, self._failures = True, None, 0
        if self._state is None or not self._state.closed:
            self._state = TunnelState(self.name, 0, self._clock.wall(), closed=True) \
                if self._state is None else replace(self._state, closed=True)
            with contextlib.suppress(Exception):  # state dir full: the alarm is what matters
                self._store.save(self._state)
        if not was_closed:
            self._alarm(ALARM_EXPIRED, True, tunnel=self.name, epoch=self.epoch, reason=reason)
            self._emit("tunnel_failed_closed", tunnel=self.name, epoch=self.epoch, reason=reason)


class FailClosedError(RuntimeError):
    """Neither a random key nor taking the interface down could stop the tunnel's traffic."""


def refusal(st: TunnelState | None, clock: Clock, reject_after: float,
            horizon: float = 0.0) -> str | None:
    """Why the key recorded in ``st`` may not be trusted to still be valid ``horizon`` seconds
    from now (None: it may)."""
    if st is None:
        return "no state recorded"
    if st.closed:
        return "it was failed closed before"
    if not st.key_fingerprint or st.activated_boot is None:
        return "the state was written by an older version"
    if st.boot_id != clock.boot_id:
        return "the system rebooted since the key was installed"
    if clock.now() + horizon - st.activated_boot >= reject_after:
        return ("the installed key is older than reject_after" if horizon <= 0 else
                f"the installed key expires within {horizon:g} s")
    return None
