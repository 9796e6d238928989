"""A tunnel's key state outside any one exchange: epochs, activation, expiry, retries, key checks.

The exchange transitions live in rekey.py (class Tunnel builds on this one). Kept here:

* **Activation and its acknowledgement.** The rekey initiator activates when it sends
  RekeyConfirm; the responder activates on receiving it and answers with a Keepalive carrying
  the tunnel's new (epoch, key check): the acknowledgement. Until it arrives the initiator's
  activation is ``unacked``; if the session ends first, the next session settles it at once.
* **Key checks** (``KeyCheck`` entries in keepalives): each side reports its active epoch and
  that epoch's public key check. A mismatch outside an exchange in flight means the ends run
  different keys (a lost confirmation, a failed activation, a restart): ``Alarm key_divergence``
  and a rekey at once (the preferred side; the other answers with its own entry and stands by).
* **Failed activations** (``ActivateFailed`` from the daemon): the view reverts to the previous
  epoch, the peer is told (RekeyAbort ACTIVATE_FAILED) and the tunnel rekeys.
* **Retries** back off 1 s doubling to 30 s; a session lost while our RekeyInit was out counts as
  a failure (an on-path attacker resetting TCP after each RekeyInit gains nothing), and the
  backoff survives the next session. It resets only when a key is activated.
* **Spare keys**: QKD keys whose IDs never left this host (the attempt was aborted while
  gathering, lost a collision before its RekeyInit went out, or the take answered after the
  attempt had ended) are kept for the next attempt. A key whose ID was sent to the peer is never
  offered again, whatever the peer answers.
* **Discarded keys**: every other QKD key that left the KMS for this tunnel and is not activated
  is reported once, with a reason (``KeysDiscarded``), so a site's KME stock balances:
  taken = activated + discarded + still held (spare or unfinished exchange).
"""

from __future__ import annotations

import hmac
import random

from gateway.keymaterial import Secret
from gateway.protocol.constants import SPARE_KEY_MAX_AGE, Timers
from gateway.protocol.events import Activate, Alarm, Expire, KeysDiscarded, Retire
from gateway.protocol.exchange import Exchange, Sink
from gateway.protocol.inner import (
    CHECK_ANSWER,
    CHECK_LEN,
    CHECK_UNKNOWN,
    AbortCode,
    Keepalive,
    KeyCheck,
    RekeyAbort,
)
from gateway.protocol.keyids import PeerKeyIds
from gateway.protocol.policy import TunnelPolicy

__all__ = ["TunnelState"]

_NO_CHECK = bytes(CHECK_LEN)

Spare = tuple[str, Secret, float]  # (key ID, key, taken at)


class TunnelState:
    """One tunnel towards one peer. ``local_sae``/``peer_sae`` fix roles and tie-breaks."""

    # Slots: 33 attributes overflow CPython's shared instance-dict keys (at most 30), which
    # gave every tunnel a dict of its own (~1.6 KB per tunnel, 16 MB at 10,000).
    __slots__ = (
        "_previous", "_retire", "_rng", "active_at", "active_check", "active_epoch", "completed",
        "diverged", "enabled_at", "expired", "failures", "highest", "hold_until", "last_attempt",
        "local_sae", "paths_dropped", "peer", "peer_sae", "pending", "policy", "policy_changed",
        "preferred", "queued", "retry_at", "sched", "spare", "synced", "timers", "unacked",
        "unacked_at", "unacked_stale", "used", "waiting",
    )

    def __init__(self, policy: TunnelPolicy, peer: str, local_sae: str, peer_sae: str,
                 timers: Timers, rng: random.Random, used: PeerKeyIds) -> None:
        self.policy, self.peer = policy, peer
        self.local_sae, self.peer_sae = local_sae, peer_sae
        self.preferred = local_sae < peer_sae  # wins collisions, rekeys first
        self.timers, self._rng, self.used = timers, rng, used
        self.highest = 0  # highest epoch accepted or completed
        self.last_attempt = 0
        self.synced = False  # an exchange completed in this process: our epochs are current
        self.active_epoch = 0
        self.active_at: float | None = None
        self.active_check: bytes | None = None  # None: no key, or restored without its check
        self._previous: tuple[int, float | None, bytes | None] = (0, None, None)
        self.expired = False
        self.enabled_at: float | None = None  # None: no session or policy mismatch
        self.failures = 0
        self.retry_at: float | None = None
        self.pending: Exchange | None = None
        self.waiting = False  # due, but the peer's exchange slots are full
        self.hold_until: float | None = None  # standing by for the backup (see stand_by)
        self.queued = False  # in the node's queue of waiting tunnels
        self.unacked: int | None = None  # epoch we activated as initiator, not yet acknowledged
        self.unacked_at = 0.0
        self.unacked_stale = False  # ... and the session it was confirmed in is gone
        self.diverged = False  # key_divergence raised, cleared by the next activation
        self.paths_dropped = False  # qkd_path_dropped raised (mode any), cleared when all back
        self.policy_changed = False  # reconfigured: rekey once both ends hold the new policy
        self.spare: dict[str, list[Spare]] = {}  # kms -> keys whose IDs never left this host
        self._retire: list[tuple[float, int]] = []
        self.completed = 0
        self.sched: float | None = None  # the node's timer heap entry for this tunnel

    @property
    def name(self) -> str:
        return self.policy.name

    # -- session lifecycle -------------------------------------------------------------------
    def session_up(self, now: float) -> None:
        # failures/retry_at survive: a session lost mid-exchange must not reset the backoff.
        self.enabled_at, self.pending, self.waiting, self.hold_until = now, None, False, None

    def session_down(self, now: float, sink: Sink) -> None:
        p = self.pending
        if p is not None:
            if p.keys is not None:
                sink.act(Retire(self.name, p.epoch))  # the lost exchange's inbound SA may exist
            if p.initiator and p.stage == "gather":
                self.salvage(p, now)  # the key IDs never left this host
            else:
                self.discard(p, "session_lost", sink)
                if p.initiator:
                    self._back_off(now)  # our RekeyInit was out: the peer may have the keys
        if self.unacked is not None:
            self.unacked_stale = True
        self.enabled_at, self.pending, self.waiting = None, None, False

    def retire_everything(self, sink: Sink) -> None:
        """The tunnel is being removed: every epoch it may still have installed goes."""
        epochs = {e for _, e in self._retire} | {self.active_epoch}
        if self.pending is not None and self.pending.keys is not None:
            epochs.add(self.pending.epoch)
        for e in sorted(epochs - {0}):
            sink.act(Retire(self.name, e))
        self._retire.clear()
        self.drop_keys("removed", sink)
        self.enabled_at = None

    def drop_keys(self, reason: str, sink: Sink) -> None:
        """Report and forget every QKD key this tunnel holds (spares, an unfinished exchange):
        the tunnel is removed or the daemon stops."""
        if self.pending is not None:
            self.discard(self.pending, reason, sink)
            self.pending = None
        for kms, keys in sorted(self.spare.items()):
            if keys:
                sink.act(KeysDiscarded(self.name, 0, kms, len(keys), reason, True))
        self.spare = {}

    # -- timers ------------------------------------------------------------------------------
    def due(self) -> float | None:
        """When this side starts its next rekey (None: not now, or it is running)."""
        if self.enabled_at is None or self.pending is not None or self.waiting:
            return None
        if self.retry_at is not None:
            return self.retry_at
        t = self.timers
        interval = t.rekey_after if self.preferred else t.rekey_after_backup
        due = self._base() + interval
        return due if self.hold_until is None else max(due, self.hold_until)

    def _base(self) -> float:
        assert self.enabled_at is not None
        return self.active_at if self.active_at is not None else (
            self.enabled_at - self.timers.rekey_after)

    def stand_by(self, now: float) -> bool:
        """The preferred side, due but late (its start waited for an exchange slot): from
        half a backup margin before the backup side's due time on, the backup steps in by its
        own timer, and starting here too would make the two RekeyInits cross, a collision that
        spends the loser's QKD key. So the late tunnel is the backup's: this side stands by
        for its RekeyInit until halfway between rekey_after and reject_after (at least two
        margins past the backup's due time: its timer is not jittered, ours may be up to 10 %
        early), then starts all the same. Explicit requests (retries, repairs) never wait."""
        if not self.preferred or self.retry_at is not None or self.enabled_at is None:
            return False
        t = self.timers
        margin = t.rekey_after_backup - t.rekey_after
        base = self._base()
        backup = base + t.rekey_after_backup
        until = max(backup + 2 * margin, base + (t.rekey_after + t.reject_after) / 2)
        if margin > 0 and backup - margin / 2 <= now < until:
            self.hold_until, self.waiting = until, False
            return True
        return False

    def wakeup(self) -> float | None:
        """The earliest time :meth:`tick` has something to do (called after every change)."""
        best = self.due()
        t = self.timers
        for when in (self.pending.started + t.rekey_timeout if self.pending else None,
                     self.active_at + t.reject_after
                     if self.active_at is not None and not self.expired else None,
                     self._retire[0][0] if self._retire else None):
            if when is not None and (best is None or when < best):
                best = when
        return best

    def tick(self, now: float, sink: Sink) -> None:
        while self._retire and self._retire[0][0] <= now:
            sink.act(Retire(self.name, self._retire.pop(0)[1]))
        if (self.active_at is not None and not self.expired
                and now >= self.active_at + self.timers.reject_after):
            self.expired = True
            sink.act(Expire(self.name, self.active_epoch, "no new key within reject_after"))
            sink.act(Alarm("key_expired", self.peer, self.name,
                           f"epoch {self.active_epoch} older than {self.timers.reject_after:g} s"))
        p = self.pending
        if p is not None and now >= p.started + self.timers.rekey_timeout:
            self._abort(sink, AbortCode.TIMEOUT, now, tell_peer=True, reason="timeout")
        due = self.due()
        if due is not None and now >= due and not self.stand_by(now):
            if sink.may_initiate():
                self.start(now, sink)
            else:
                self.waiting = True

    def start(self, now: float, sink: Sink) -> None:  # pragma: no cover - rekey.py
        raise NotImplementedError

    # -- activation, acknowledgement, key checks ---------------------------------------------
    def _activate(self, p: Exchange, now: float, sink: Sink) -> None:
        assert p.keys is not None
        sink.act(Activate(self.name, p.epoch))
        if self.active_epoch:
            self._retire.append((now + self.timers.retire_grace, self.active_epoch))
        self._previous = (self.active_epoch, self.active_at, self.active_check)
        self.highest = max(self.highest, p.epoch)
        self.active_epoch, self.active_at, self.expired = p.epoch, now, False
        self.active_check = p.keys.key_check
        self.pending, self.failures, self.retry_at = None, 0, None
        self.waiting, self.hold_until = False, None  # a queued start is moot: starts over
        self.synced, self.diverged, self.completed = True, False, self.completed + 1
        if p.initiator:
            self.unacked, self.unacked_at, self.unacked_stale = p.epoch, now, False
        else:
            self.unacked = None
            sink.send(Keepalive((self.key_check(),)))  # the acknowledgement

    def key_check(self, flags: int = 0) -> KeyCheck:
        if self.active_check is None:
            return KeyCheck(self.name, self.active_epoch, _NO_CHECK, flags | CHECK_UNKNOWN)
        return KeyCheck(self.name, self.active_epoch, self.active_check, flags)

    def on_key_check(self, e: KeyCheck, now: float, sink: Sink) -> None:
        if self.enabled_at is None:
            return
        unknown = bool(e.flags & CHECK_UNKNOWN) or self.active_check is None
        if e.epoch == self.active_epoch and (unknown or hmac.compare_digest(
                e.check, self.active_check or b"")):
            if self.unacked == e.epoch:
                self.unacked = None
            if e.flags & CHECK_ANSWER:
                sink.send(Keepalive((self.key_check(),)))
            return
        if self.pending is not None or (self.unacked is not None and not self.unacked_stale
                                        and now < self.unacked_at + self.timers.keepalive_interval):
            return  # an exchange or its acknowledgement is in flight: not (yet) a divergence
        if e.flags & CHECK_ANSWER or not self.preferred:
            sink.send(Keepalive((self.key_check(),)))  # so the peer sees it too
        self.unacked = None
        if 0 in (e.epoch, self.active_epoch):
            # One core knows no key (a restart that did not restore its epoch, or a first
            # exchange whose confirmation was lost): no alarm, just a rekey soon.
            self.rekey_soon(now)
            return
        if not self.diverged:
            sink.act(Alarm("key_divergence", self.peer, self.name,
                           f"peer runs epoch {e.epoch}, this side {self.active_epoch}: "
                           "rekeying now"))
        self._repair(now)

    def on_activate_failed(self, epoch: int, reason: str, now: float, sink: Sink) -> None:
        if epoch != self.active_epoch or epoch == 0:
            return  # an older epoch: already superseded
        sink.act(Alarm("activate_failed", self.peer, self.name, f"epoch {epoch}: {reason}"))
        if self.enabled_at is not None:
            sink.send(RekeyAbort(self.name, epoch, AbortCode.ACTIVATE_FAILED, self.highest))
        sink.act(Retire(self.name, epoch))
        prev_epoch = self._previous[0]
        self._retire = [(t, e) for t, e in self._retire if e != prev_epoch]
        self.active_epoch, self.active_at, self.active_check = self._previous
        self._previous = (0, None, None)
        self.unacked = None
        self._repair(now)

    def _repair(self, now: float) -> None:
        """The ends run different keys: rekey soon."""
        self.diverged = True
        self.rekey_soon(now)

    def rekey_soon(self, now: float) -> None:
        """The preferred side rekeys at once; the other stands by one keepalive interval (it
        steps in if the preferred side cannot), which avoids a collision wasting keys."""
        if self.pending is None:
            at = now if self.preferred else now + self.timers.keepalive_interval
            self.retry_at = at if self.retry_at is None else min(self.retry_at, at)

    # -- failures and spare keys -------------------------------------------------------------
    def _abort(self, sink: Sink, code: AbortCode, now: float, *, tell_peer: bool,
               reason: str = "abort") -> None:
        p = self.pending
        if p is None:
            return
        if tell_peer and self.enabled_at is not None:
            sink.send(RekeyAbort(self.name, p.epoch, code, self.highest))
        if p.keys is not None and p.stage != "gather":
            sink.act(Retire(self.name, p.epoch))  # an inbound SA may be installed already
        self.pending = None
        if p.initiator and p.stage == "gather":
            self.salvage(p, now)  # no RekeyInit went out: nobody knows these key IDs
        else:
            self.discard(p, reason, sink)
        if p.initiator:  # only the side that started it retries: no self-inflicted collisions
            self._back_off(now)

    def _back_off(self, now: float) -> None:
        self.failures += 1
        t = self.timers
        backoff = min(t.retry_cap, t.retry_base * 2 ** min(self.failures - 1, 16))
        backoff *= 1 + self._rng.uniform(-t.retry_jitter, t.retry_jitter)
        self.retry_at = now + backoff

    def salvage(self, p: Exchange, now: float) -> None:
        """Keep the exchange's QKD keys for the next attempt. Only for an attempt whose
        RekeyInit never went out: a key ID the peer has seen is never offered again."""
        assert p.initiator and p.init is None, "salvaging keys whose IDs were sent"
        for kms, key in p.qkd.items():
            if key is not None and kms in p.key_ids:
                self.keep_spare(kms, (p.key_ids[kms], key, p.since.get(kms, now)))

    def keep_spare(self, kms: str, spare: Spare) -> None:
        self.spare.setdefault(kms, []).append(spare)

    def discard(self, p: Exchange, reason: str, sink: Sink) -> None:
        """Report the QKD keys ``p`` holds as discarded (they are not used any more)."""
        for kms in sorted(k for k, key in p.qkd.items() if key is not None):
            sink.act(KeysDiscarded(self.name, p.epoch, kms, 1, reason, p.initiator))
        p.qkd.clear()

    def spare_ids(self) -> list[str]:
        return [kid for keys in self.spare.values() for kid, _, _ in keys]

    def take_spare(self, kms: str, now: float, sink: Sink) -> Spare | None:
        """The oldest spare key of ``kms`` still young enough (older ones are discarded)."""
        keys = self.spare.get(kms)
        expired = 0
        got = None
        while keys and got is None:
            first = keys.pop(0)
            if now - first[2] > SPARE_KEY_MAX_AGE:
                expired += 1
            else:
                got = first
        if not keys:
            self.spare.pop(kms, None)
        if expired:
            sink.act(KeysDiscarded(self.name, 0, kms, expired, "expired", True))
        return got

