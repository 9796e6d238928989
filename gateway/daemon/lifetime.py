"""What every tunnel keeper shares, whatever its data plane: the key's lifetime.

A tunnel never carries traffic under a key older than ``reject_after``. Every activation pushes
the deadline forward; when it passes with no new key, :meth:`KeyLifetime.on_due` (called by the
daemon's one deadline task, gateway.daemon.deadlines) fails the tunnel closed and raises
``tunnel_key_expired``; the next activation clears it. How a tunnel is failed
closed depends on its data plane (WireGuard: a random PSK, else the interface down, see
gateway.daemon.keeper; ESP: the SAs go and the policies stay, see gateway.daemon.esp_keeper):
subclasses implement :meth:`_fail_closed_locked` and call :meth:`_closed_done` once traffic is
really stopped, or set ``_close_pending`` (then :meth:`_rearm`) so that it is retried with
backoff.

The state directory (gateway.daemon.state) records each activation (never keys: a one-way
fingerprint); :func:`refusal` says whether a recorded key may still be trusted after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any, Protocol

from gateway.daemon.clock import BootClock, Clock
from gateway.daemon.deadlines import Deadlines
from gateway.daemon.state import StateError, StateStore, TunnelState

__all__ = ["ALARM_CLOSE_FAILED", "ALARM_EXPIRED", "Alarm", "Emit", "FailClosedError",
           "KeyLifetime", "refusal"]

ALARM_EXPIRED = "tunnel_key_expired"
ALARM_CLOSE_FAILED = "tunnel_fail_closed_failed"
#: Retry of a failed fail-closed: 1 s doubling to 30 s (the data plane is local: it either comes
#: back quickly, e.g. a restarted wireguard-go, or needs an operator, whom the alarm calls).
_RETRY_BASE, _RETRY_CAP = 1.0, 30.0


class Emit(Protocol):
    def __call__(self, event: str, **fields: Any) -> None: ...


class Alarm(Protocol):
    def __call__(self, name: str, active: bool, **fields: Any) -> object: ...


class FailClosedError(RuntimeError):
    """The tunnel's traffic could not be stopped (neither way the data plane offers worked)."""


class KeyLifetime:
    """The deadline, the alarms and the state file of one tunnel."""

    #: ``status()["dataplane"]`` and the daemon's dispatch: "wireguard" or "esp".
    kind = "wireguard"

    def __init__(self, name: str, reject_after: float, store: StateStore, emit: Emit,
                 alarm: Alarm, clock: Clock | None = None) -> None:
        self.name = name
        self._reject_after = reject_after
        self._store = store
        self._emit = emit
        self._alarm = alarm
        self._clock = clock or BootClock()
        self._state: TunnelState | None = None
        self._deadline = 0.0  # boot clock
        self._closed = False  # set by start(): resumed, or failed closed
        self._close_pending: str | None = None  # a fail-closed that has not succeeded yet
        self._alarmed_close = False  # ALARM_CLOSE_FAILED is raised
        self._failures = 0
        self.keys_installed = 0  # keys installed by this process
        self._deadlines: Deadlines | None = None  # the scheduler watching this keeper
        self._retry_at = 0.0  # event loop time: next retry of a pending fail-closed
        self._retry_for = 0  # the _failures count _retry_at was computed for
        # One data-plane write at a time: the deadline, an Expire from the protocol and an
        # activation must never interleave (two fail-closed writes racing each other's
        # read-back was seen when the core's Expire coincided with the deadline).
        self._write = asyncio.Lock()

    # -- facts for status and the scheduler ---------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._state.epoch if self._state else 0

    @property
    def closed(self) -> bool:
        """True while the tunnel is failed closed, or failing."""
        return self._closed or self._close_pending is not None

    def status_stamp(self) -> tuple[Any, ...]:
        """What :meth:`status` shows, but for its ages, as one cheap comparable value: equal
        stamps, equal statuses (the record is a frozen object, replaced at each change)."""
        return (self._state, self.closed, self.keys_installed)

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
            self._rearm()

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

    # -- state ----------------------------------------------------------------------------------
    def _load(self) -> TunnelState | None:
        """The recorded state; an unreadable file counts as none (the tunnel then starts closed
        and the file is rewritten): a broken file must never keep a tunnel from closing."""
        try:
            return self._store.load(self.name)
        except StateError as exc:
            self._emit("tunnel_state_unreadable", level="error", tunnel=self.name,
                       error=str(exc))
            return None

    def _resumed(self) -> None:
        assert self._state is not None and self._state.activated_boot is not None
        self._closed = False
        self._deadline = self._state.activated_boot + self._reject_after
        self._emit("tunnel_resumed", tunnel=self.name, epoch=self._state.epoch,
                   expires_in_s=round(self._deadline - self._clock.now(), 1))

    def _activated(self, state: TunnelState, rekey_s: float | None) -> None:
        """Bookkeeping after the data plane took the new epoch (``_write`` held)."""
        self._state = state
        self._store.save(state)
        self._deadline = (state.activated_boot or self._clock.now()) + self._reject_after
        self.keys_installed += 1
        if self._closed or self._close_pending is not None:
            self._alarm(ALARM_EXPIRED, False, tunnel=self.name, epoch=state.epoch)
        if self._alarmed_close:
            self._alarm(ALARM_CLOSE_FAILED, False, tunnel=self.name)
            self._alarmed_close = False
        self._closed, self._close_pending, self._failures = False, None, 0
        self._rearm()
        self._emit("tunnel_rekeyed", tunnel=self.name, epoch=state.epoch,
                   key_ids=list(state.key_ids), achieved=state.achieved,
                   rekey_ms=None if rekey_s is None else round(rekey_s * 1000, 3))

    # -- lifecycle --------------------------------------------------------------------------------
    async def failsafe(self, horizon: float) -> str | None:
        """For ``qkd-gateway failsafe`` while no daemon runs: fail the tunnel closed if the state
        directory does not show a key valid for at least ``horizon`` more seconds. Returns the
        reason, or None if nothing was to be done. Raises FailClosedError if traffic could not
        be stopped."""
        st = self._load()
        if st is not None and st.closed:
            return None
        why = refusal(st, self._clock, self._reject_after, horizon)
        if why is None:
            return None
        self._state = st
        await self._fail_closed(f"failsafe: {why}")
        if self._close_pending is not None:
            raise FailClosedError(f"tunnel {self.name}: {self._close_failed_text()} (see the log)")
        return why

    def _close_failed_text(self) -> str:
        return "its traffic could not be stopped"

    # -- the deadline ------------------------------------------------------------------------
    def attach(self, deadlines: Deadlines) -> None:
        """Let ``deadlines`` (the daemon's one scheduler) act on this keeper's deadline and
        retries from now on."""
        self._deadlines = deadlines
        deadlines.add(self)

    def detach(self) -> None:
        if self._deadlines is not None:
            self._deadlines.discard(self)
            self._deadlines = None

    def _rearm(self) -> None:
        """The time to act may have changed (activation, fail-closed, reload): tell the
        scheduler. Cheap; called after every change of the state it depends on."""
        if self._deadlines is not None:
            self._deadlines.arm(self)

    def due_in(self) -> float | None:
        """Seconds until :meth:`on_due` must run: the deadline while open, the next retry of a
        pending fail-closed (1 s doubling to 30 s after each failure), None while closed."""
        if self._close_pending is not None:
            # Backoff in the event loop's time (as the wait itself): a retry does not depend
            # on the keeper's clock.
            now = asyncio.get_running_loop().time()
            if self._retry_for != self._failures:  # a new failure: back off from now
                self._retry_for = self._failures
                self._retry_at = now + min(_RETRY_CAP,
                                           _RETRY_BASE * 2 ** min(self._failures - 1, 8))
            return self._retry_at - now
        if not self._closed:
            return self._deadline - self._clock.now()
        return None

    async def on_due(self) -> None:
        """Called by the scheduler when :meth:`due_in` has run out: retry a pending
        fail-closed, or fail closed when the deadline has passed without a new key (checked
        again on the keeper's clock). Never raises."""
        try:
            if self._close_pending is not None:
                await self._fail_closed(self._close_pending)
            elif not self._closed and self._deadline <= self._clock.now():
                await self._fail_closed(f"no successful rekey within {self._reject_after:g} s")
        except Exception as exc:  # a bug: keep it visible, the next due time retries
            self._emit("tunnel_deadline_error", level="error", tunnel=self.name,
                       error=f"{type(exc).__name__}: {exc}")

    async def watch(self) -> None:
        """Act on this keeper's deadline alone, with a scheduler of its own, until cancelled
        (tests and single-tunnel tools; the daemon attaches every keeper to one scheduler)."""
        deadlines = Deadlines()
        self.attach(deadlines)
        try:
            await deadlines.run()
        finally:
            if self._deadlines is deadlines:
                self.detach()

    async def expire(self, reason: str) -> None:
        """The protocol declared the current key expired: fail closed now (idempotent)."""
        if not self._closed:
            await self._fail_closed(reason)

    async def _fail_closed(self, reason: str, *, rewrite: bool = False) -> None:
        async with self._write:
            if self._closed and self._close_pending is None and not rewrite:
                return  # another path (deadline, Expire) closed it meanwhile
            try:
                await self._fail_closed_locked(reason, rewrite=rewrite)
            finally:
                self._rearm()

    async def _fail_closed_locked(self, reason: str, *, rewrite: bool = False) -> None:
        raise NotImplementedError  # pragma: no cover - each data plane's own

    def _close_failed(self, reason: str, step: str, error: str, *, alarm: bool) -> None:
        """A fail-closed step failed: log it, count it, (``alarm``) raise ALARM_CLOSE_FAILED;
        it is retried (see due_in) until it succeeds."""
        self._emit("tunnel_fail_closed_error", level="error", tunnel=self.name, step=step,
                   error=error, retry=self._failures + 1)
        self._failures += 1
        if alarm and not self._alarmed_close:
            self._alarm(ALARM_CLOSE_FAILED, True, tunnel=self.name, reason=error)
            self._alarmed_close = True
        self._close_pending = reason
        self._rearm()

    def _closed_done(self, reason: str, **fields: Any) -> None:
        """Traffic is stopped for good (``_write`` held): mark the state closed, settle alarms."""
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
            self._emit("tunnel_failed_closed", tunnel=self.name, epoch=self.epoch,
                       reason=reason, **fields)
        self._rearm()


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
