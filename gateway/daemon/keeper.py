"""One tunnel's key lifetime: install, remember, and fail closed at ``reject_after``.

The keeper owns the rule operators care most about: a tunnel never carries traffic under a key
older than ``reject_after``. Every successful rotation pushes the deadline forward; when it passes
with no new key (KMS down, peer unreachable, policy not met), the keeper installs a fresh random
key that the peer cannot know and ends the running session, so traffic stops instead of
continuing under a stale or weaker key, and raises the ``tunnel_key_expired`` alarm. The next
successful rotation clears it.

Failing closed must itself not fail open. If the random key cannot be written, the keeper takes
the interface down (``set_blocked``); if even that fails it raises ``tunnel_fail_closed_failed`` and
retries with backoff for as long as the daemon runs. Nothing here raises out of :meth:`on_due`.
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

import contextlib
from typing import TYPE_CHECKING, Protocol

from gateway.daemon.clock import Clock
from gateway.daemon.lifetime import (
    ALARM_CLOSE_FAILED,
    ALARM_EXPIRED,
    Alarm,
    Emit,
    FailClosedError,
    KeyLifetime,
    refusal,
)
from gateway.daemon.state import StateStore, TunnelState, fingerprint
from gateway.keymaterial import Secret

if TYPE_CHECKING:
    from gateway.protocol import TunnelKeys

__all__ = ["ALARM_CLOSE_FAILED", "ALARM_EXPIRED", "Alarm", "Emit", "FailClosedError",
           "KeyInstaller", "TunnelKeeper", "refusal"]


class _Unread:
    """:meth:`TunnelKeeper.verify` was given no read of the slot: it reads it itself."""


UNREAD = _Unread()


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


class TunnelKeeper(KeyLifetime):
    """A WireGuard tunnel's keeper: one PSK slot (see the module docstring)."""

    kind = "wireguard"

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
        super().__init__(name, reject_after, store, emit, alarm, clock)
        self._installer = installer
        self._key_length = key_length
        self._key: Secret | None = None  # what the data plane should hold right now
        self._blocked = False  # the interface was taken down by a fail-closed

    # -- what the action runner calls, the same for every kind of tunnel -----------------------
    async def allocate_spi(self, epoch: int) -> int:
        raise ValueError(f"tunnel {self.name} is a WireGuard tunnel: it has no SPIs")

    async def install_inbound(self, epoch: int, keys: TunnelKeys) -> None:
        """WireGuard has no inbound/outbound split: the PSK is set at Activate. Holding the keys
        until then (the action runner does) is the "install inbound" step."""

    async def activate_keys(self, epoch: int, keys: TunnelKeys,
                            rekey_s: float | None = None) -> None:
        await self.activate(epoch, keys.wg_psk, keys.key_ids, keys.mode,
                            "+".join(keys.achieved), rekey_s)

    async def retire(self, epoch: int) -> None:
        """Nothing to remove: a PSK slot holds one key, replaced at each activation."""

    # -- lifecycle ----------------------------------------------------------------------------
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
            self._key = held
            self._resumed()
        else:
            await self._fail_closed(f"no valid key at start: {why}")

    def _close_failed_text(self) -> str:
        return "could neither write a random key nor take the interface down"

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
            self._key = key
            self._activated(TunnelState(self.name, epoch, self._clock.wall(), key_ids, policy,
                                        achieved, self._clock.boot_id, now,
                                        fingerprint(self.name, epoch, key)), rekey_s)

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

    async def verify(self, seen: Secret | _Unread | None = UNREAD) -> bool:
        """Read the data plane back; restore the key it should hold if it differs (e.g. the peer
        was re-added by reconciliation with an empty slot). True if something was restored.

        ``seen``: the slot as a read of the whole interface found it a moment ago (one read for
        every tunnel of a hub, gateway.daemon.periodic). Holding the key this keeper holds
        settles it; anything else (an activation since, a real drift) is read again here."""
        if seen is not UNREAD and self._key is not None and seen == self._key \
                and self._close_pending is None:
            return False
        async with self._write:
            if self._close_pending is not None:
                return False  # the deadline scheduler is already retrying
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
        self._rearm()
        return True

    async def close(self, teardown: bool) -> None:
        await self._installer.close(teardown)

    async def _fail_closed_locked(self, reason: str, *, rewrite: bool = False) -> None:
        """A random key the peer cannot know, and the running session ended (WireGuard would
        otherwise keep the old session's keys for up to REJECT_AFTER_TIME, 180 s). If that
        cannot be written, the interface goes down (traffic stops) and the write is retried
        (see due_in) until the old key is really gone: only then is the state marked closed. If
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
            self._close_pending = reason  # retried (due_in) until the key is written
            if self._blocked and not self._closed:
                self._closed = True  # no traffic passes: closed, but not done
                self._alarm(ALARM_EXPIRED, True, tunnel=self.name, epoch=self.epoch,
                            reason=reason)
                self._emit("tunnel_failed_closed", tunnel=self.name, epoch=self.epoch,
                           reason=reason, interface_down=True)
            self._rearm()
            return
        self._key = key
        self._closed_done(reason)
