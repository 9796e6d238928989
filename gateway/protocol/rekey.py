"""Per-tunnel rekey state machine (runs inside an authenticated control session).

::

    initiator (takes QKD keys = master SAE)           responder (fetches by key ID = slave SAE)
    GATHER: TakeQkdKeys per path, AllocateSpi
    RekeyInit(epoch, mode, key_IDs, ek, X_i, N_i, SPI_i) ->
                                                      GATHER: FetchQkdKeys per path, AllocateSpi
                                                      derive; InstallKeys (inbound) ... Installed
                                   <- RekeyResp(mask, ct, X_r, N_r, SPI_r, MAC_r)
    derive, check MAC_r; InstallKeys ... Installed
    RekeyConfirm(MAC_i) ->; Activate                  check MAC_i; Activate

Either side may abort with RekeyAbort; the exchange's QKD keys are then discarded (they were
consumed at the KMS and are never offered again) and the initiator retries later with NEW keys.
Collisions: the side with the lower SAE ID wins; the other drops its own attempt.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from gateway.keymaterial import Secret
from gateway.protocol import combiner as cb
from gateway.protocol.constants import MAX_EPOCH_STEP, NONCE_LEN, QKD_KEY_LEN, SPI_MIN, Timers
from gateway.protocol.errors import PolicyError
from gateway.protocol.events import (
    Action,
    Activate,
    Alarm,
    AllocateSpi,
    Event,
    Expire,
    FetchQkdKeys,
    Installed,
    InstallFailed,
    InstallKeys,
    KeysFetched,
    KeysFetchFailed,
    KeysTakeFailed,
    KeysTaken,
    Retire,
    SpiAllocated,
    TakeQkdKeys,
)
from gateway.protocol.exchange import (
    Exchange,
    Sink,
    UsedKeyIds,
    check_init,
    macs_equal,
    next_epoch,
    offered_mask,
    qkd_secrets,
    spi_ok,
    transcript,
    tunnel_keys,
)
from gateway.protocol.messages import (
    AbortCode,
    InnerMessage,
    RekeyAbort,
    RekeyConfirm,
    RekeyInit,
    RekeyResp,
)
from gateway.protocol.policy import Achieved, Kind, Mode, TunnelPolicy, check_achieved

__all__ = ["Tunnel"]

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class Tunnel:
    """One tunnel towards one peer. ``local_sae``/``peer_sae`` fix roles and tie-breaks."""

    def __init__(self, policy: TunnelPolicy, peer: str, local_sae: str, peer_sae: str,
                 timers: Timers, rng: random.Random) -> None:
        self.policy, self.peer = policy, peer
        self.local_sae, self.peer_sae = local_sae, peer_sae
        self.preferred = local_sae < peer_sae  # wins collisions, rekeys first
        self.timers, self._rng = timers, rng
        self.highest = 0  # highest epoch accepted or completed
        self.last_attempt = 0
        self.active_epoch = 0
        self.active_at: float | None = None
        self.expired = False
        self.enabled_at: float | None = None  # None: no session or policy mismatch
        self.failures = 0
        self.retry_at: float | None = None
        self.pending: Exchange | None = None
        self._retire: list[tuple[float, int]] = []
        self.completed = 0

    @property
    def name(self) -> str:
        return self.policy.name

    # -- session lifecycle -------------------------------------------------------------------
    def session_up(self, now: float) -> None:
        self.enabled_at, self.pending, self.retry_at, self.failures = now, None, None, 0

    def session_down(self, act: Callable[[Action], None]) -> None:
        p = self.pending
        if p is not None and p.keys is not None:
            act(Retire(self.name, p.epoch))  # an inbound SA of the lost exchange may exist
        self.enabled_at, self.pending = None, None

    # -- timers ------------------------------------------------------------------------------
    def due(self) -> float | None:
        if self.enabled_at is None or self.pending is not None:
            return None
        if self.retry_at is not None:
            return self.retry_at
        t = self.timers
        interval = t.rekey_after if self.preferred else t.rekey_after_backup
        base = self.active_at if self.active_at is not None else self.enabled_at - t.rekey_after
        return base + interval

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
            self._abort(sink, AbortCode.TIMEOUT, now, tell_peer=True)
        due = self.due()
        if due is not None and now >= due:
            self.start(now, sink)

    # -- initiator ---------------------------------------------------------------------------
    def start(self, now: float, sink: Sink) -> None:
        epoch = next_epoch(max(self.highest, self.last_attempt), preferred=self.preferred)
        self.last_attempt = epoch
        waiting = {f"kms:{k}" for k in self.policy.kms}
        if self.policy.kind is Kind.ESP:
            waiting.add("spi")
        self.pending = Exchange(True, epoch, now, waiting)
        for k in self.policy.kms:
            sink.act(TakeQkdKeys(self.name, epoch, k, self.peer_sae))
        if self.policy.kind is Kind.ESP:
            sink.act(AllocateSpi(self.name, epoch))
        self._gathered(now, sink)

    def _send_init(self, p: Exchange, sink: Sink) -> None:
        p.x25519 = x25519.X25519PrivateKey.generate()
        ek = b""
        if self.policy.mode.uses_mlkem:
            p.kem = mlkem.MLKEM768PrivateKey.generate()
            ek = p.kem.public_key().public_bytes(*_RAW)
        key_ids = tuple(p.key_ids.get(k, "") for k in self.policy.kms)
        p.init = RekeyInit(self.name, p.epoch, self.policy.mode, key_ids, ek,
                           p.x25519.public_key().public_bytes(*_RAW), os.urandom(NONCE_LEN), p.spi)
        p.stage = "await_resp"
        sink.send(p.init)

    def _on_resp(self, m: RekeyResp, now: float, sink: Sink) -> None:
        p = self.pending
        if p is None or not p.initiator or p.stage != "await_resp" or m.epoch != p.epoch:
            return  # late or foreign: the exchange it belongs to is gone
        assert p.init is not None and p.x25519 is not None
        offered = offered_mask(p.init)
        try:
            if bool(m.mlkem_ct) != bool(p.init.mlkem_ek) or not spi_ok(self.policy, m.spi):
                raise PolicyError("response does not match the request")
            if m.qkd_mask & ~offered or (m.qkd_mask != offered and self.policy.mode is not
                                          Mode.ANY):
                raise PolicyError("responder left out a QKD path the mode requires")
            ss_kem = Secret(p.kem.decapsulate(m.mlkem_ct)) if p.kem is not None else None
            ss_x = Secret(p.x25519.exchange(x25519.X25519PublicKey.from_public_bytes(m.x25519)))
        except (ValueError, PolicyError):
            self._abort(sink, AbortCode.POLICY, now, tell_peer=True)
            return
        t = transcript(self.policy, p.init, m, self.local_sae, self.peer_sae)
        secrets = qkd_secrets(self.policy, p, m.qkd_mask)
        keys = cb.combine(cb.CombinerSecrets(ss_kem, secrets, ss_x), t)
        if not macs_equal(cb.confirm_mac(keys.confirm_r, keys.transcript_hash), m.mac):
            sink.act(Alarm("rekey_confirm_failed", self.peer, self.name, "responder MAC wrong"))
            self._abort(sink, AbortCode.BAD_MAC, now, tell_peer=True)
            return
        p.keys, p.resp, p.stage = keys, m, "installing"
        mine = tunnel_keys(self.policy, t, keys, local_initiator=True, spi_in=p.init.spi,
                           spi_out=m.spi)
        sink.act(InstallKeys(self.name, p.epoch, mine))

    # -- responder ---------------------------------------------------------------------------
    def _on_init(self, m: RekeyInit, now: float, sink: Sink, used: UsedKeyIds) -> None:
        p = self.pending
        if p is not None and p.initiator:
            if self.preferred:
                return  # collision, we win: the peer drops its attempt when it sees ours
            p = self.pending = None  # collision, we lose: our QKD keys are discarded
        code, alarm = check_init(self.policy, m, self.highest, self.last_attempt, used,
                                 enabled=self.enabled_at is not None,
                                 peer_preferred=not self.preferred)
        if alarm is not None:
            sink.act(Alarm(alarm[0], self.peer, self.name, alarm[1]))
        if code is not None:
            sink.send(RekeyAbort(self.name, m.epoch, code, self.highest))
            return
        old = self.pending  # a newer request replaces an unfinished one
        if old is not None and old.keys is not None:
            sink.act(Retire(self.name, old.epoch))  # its inbound SA may be installed
        self.highest = m.epoch
        used.add(k for k in m.key_ids if k)
        waiting = {f"kms:{k}" for k, i in zip(self.policy.kms, m.key_ids, strict=True) if i}
        if self.policy.kind is Kind.ESP:
            waiting.add("spi")
        self.pending = Exchange(False, m.epoch, now, waiting, init=m)
        for kms, kid in zip(self.policy.kms, m.key_ids, strict=True):
            if kid:
                self.pending.key_ids[kms] = kid
                sink.act(FetchQkdKeys(self.name, m.epoch, kms, self.peer_sae, (kid,)))
        if self.policy.kind is Kind.ESP:
            sink.act(AllocateSpi(self.name, m.epoch))
        self._gathered(now, sink)

    def _respond(self, p: Exchange, now: float, sink: Sink) -> None:
        m = p.init
        assert m is not None
        try:
            ct, ss_kem = b"", None
            if m.mlkem_ek:
                ss, ct = mlkem.MLKEM768PublicKey.from_public_bytes(m.mlkem_ek).encapsulate()
                ss_kem = Secret(ss)
            p.x25519 = x25519.X25519PrivateKey.generate()
            ss_x = Secret(p.x25519.exchange(x25519.X25519PublicKey.from_public_bytes(m.x25519)))
        except ValueError:
            self._abort(sink, AbortCode.POLICY, now, tell_peer=True)
            return
        mask = sum(1 << n for n, k in enumerate(self.policy.kms) if p.qkd.get(k) is not None)
        resp = RekeyResp(self.name, p.epoch, mask, ct,
                         p.x25519.public_key().public_bytes(*_RAW), os.urandom(NONCE_LEN), p.spi,
                         b"")
        t = transcript(self.policy, m, resp, self.peer_sae, self.local_sae)
        keys = cb.combine(cb.CombinerSecrets(ss_kem, qkd_secrets(self.policy, p, mask), ss_x), t)
        p.keys, p.stage = keys, "installing"
        p.resp = RekeyResp(resp.tunnel, resp.epoch, mask, ct, resp.x25519, resp.nonce, resp.spi,
                           cb.confirm_mac(keys.confirm_r, keys.transcript_hash))
        mine = tunnel_keys(self.policy, t, keys, local_initiator=False, spi_in=p.spi,
                           spi_out=m.spi)
        sink.act(InstallKeys(self.name, p.epoch, mine))

    def _on_confirm(self, m: RekeyConfirm, now: float, sink: Sink) -> None:
        p = self.pending
        if p is None or p.initiator or p.stage != "await_confirm" or m.epoch != p.epoch:
            return
        assert p.keys is not None
        if not macs_equal(cb.confirm_mac(p.keys.confirm_i, p.keys.transcript_hash), m.mac):
            sink.act(Alarm("rekey_confirm_failed", self.peer, self.name, "initiator MAC wrong"))
            self._abort(sink, AbortCode.BAD_MAC, now, tell_peer=True)
            return
        self._activate(p, now, sink)

    # -- shared ------------------------------------------------------------------------------
    def on_message(self, m: InnerMessage, now: float, sink: Sink, used: UsedKeyIds) -> None:
        if isinstance(m, RekeyInit):
            self._on_init(m, now, sink, used)
        elif isinstance(m, RekeyResp):
            self._on_resp(m, now, sink)
        elif isinstance(m, RekeyConfirm):
            self._on_confirm(m, now, sink)
        elif isinstance(m, RekeyAbort):
            if m.highest_epoch <= max(self.highest, self.last_attempt) + MAX_EPOCH_STEP:
                self.last_attempt = max(self.last_attempt, m.highest_epoch)
            p = self.pending
            if p is not None and p.epoch == m.epoch:
                self._abort(sink, m.code, now, tell_peer=False)
            elif m.epoch == self.active_epoch and self.retry_at is None:
                # The peer gave up on the exchange we completed (our RekeyConfirm came too late):
                # it never switched to this epoch. Rekey now rather than run on mismatched keys
                # until the next scheduled rekey.
                sink.act(Alarm("epoch_not_confirmed", self.peer, self.name,
                               f"peer aborted epoch {m.epoch} after it was activated here"))
                self.retry_at = now

    def on_event(self, ev: Event, now: float, sink: Sink) -> None:
        p = self.pending
        if p is None or ev.epoch != p.epoch:
            return  # result for an abandoned exchange: its keys are simply dropped
        if isinstance(ev, KeysTaken | KeysTakeFailed) != p.initiator and isinstance(
                ev, KeysTaken | KeysTakeFailed | KeysFetched | KeysFetchFailed):
            return  # a take answers only our own attempt, a fetch only the peer's
        if isinstance(ev, KeysTaken | KeysFetched):
            self._on_keys(p, ev, now, sink)
        elif isinstance(ev, KeysTakeFailed | KeysFetchFailed):
            if f"kms:{ev.kms}" not in p.waiting:
                return
            p.waiting.discard(f"kms:{ev.kms}")
            p.qkd[ev.kms] = None
            if self.policy.mode is not Mode.ANY:  # only "any" tolerates a missing path
                sink.act(Alarm("qkd_unavailable", self.peer, self.name,
                               f"kms {ev.kms}: {ev.reason}"))
                self._abort(sink, AbortCode.FETCH_FAILED, now, tell_peer=not p.initiator)
                return
            self._gathered(now, sink)
        elif isinstance(ev, SpiAllocated):
            if "spi" in p.waiting and ev.spi >= SPI_MIN and ev.spi < 2**32:
                p.waiting.discard("spi")
                p.spi = ev.spi
                self._gathered(now, sink)
        elif isinstance(ev, Installed) and p.stage == "installing":
            if p.initiator:
                assert p.keys is not None
                sink.send(RekeyConfirm(self.name, p.epoch,
                                       cb.confirm_mac(p.keys.confirm_i, p.keys.transcript_hash)))
                self._activate(p, now, sink)
            else:
                assert p.resp is not None
                p.stage = "await_confirm"
                sink.send(p.resp)
        elif isinstance(ev, InstallFailed) and p.stage == "installing":
            sink.act(Alarm("install_failed", self.peer, self.name, ev.reason))
            self._abort(sink, AbortCode.TIMEOUT, now, tell_peer=True)

    def _on_keys(self, p: Exchange, ev: KeysTaken | KeysFetched, now: float, sink: Sink) -> None:
        tag = f"kms:{ev.kms}"
        if tag not in p.waiting:
            return
        want = p.key_ids.get(ev.kms)
        ok = len(ev.keys) == 1 and len(ev.keys[0].key) == QKD_KEY_LEN and (
            want is None or ev.keys[0].key_id == want)
        if not ok:
            sink.act(Alarm("qkd_key_invalid", self.peer, self.name,
                           f"kms {ev.kms} returned an unusable key (need one 256-bit key"
                           + ("" if want is None else f" with ID {want}") + ")"))
            self._abort(sink, AbortCode.FETCH_FAILED, now, tell_peer=not p.initiator)
            return
        p.waiting.discard(tag)
        p.qkd[ev.kms] = ev.keys[0].key
        p.key_ids[ev.kms] = ev.keys[0].key_id
        self._gathered(now, sink)

    def _gathered(self, now: float, sink: Sink) -> None:
        p = self.pending
        if p is None or p.waiting or p.stage != "gather":
            return
        if p.initiator:
            got = Achieved(sum(1 << i for i, k in enumerate(self.policy.kms) if p.qkd.get(k)),
                           self.policy.mode.uses_mlkem)
            try:
                check_achieved(self.policy, got)
            except PolicyError as exc:
                sink.act(Alarm("policy_unmet", self.peer, self.name, str(exc)))
                self._abort(sink, AbortCode.POLICY, now, tell_peer=False)
                return
            self._send_init(p, sink)
        else:
            self._respond(p, now, sink)

    def _activate(self, p: Exchange, now: float, sink: Sink) -> None:
        sink.act(Activate(self.name, p.epoch))
        if self.active_epoch:
            self._retire.append((now + self.timers.retire_grace, self.active_epoch))
        self.highest = max(self.highest, p.epoch)
        self.active_epoch, self.active_at, self.expired = p.epoch, now, False
        self.pending, self.failures, self.retry_at = None, 0, None
        self.completed += 1

    def _abort(self, sink: Sink, code: AbortCode, now: float, *, tell_peer: bool) -> None:
        p = self.pending
        if p is None:
            return
        if tell_peer and self.enabled_at is not None:
            sink.send(RekeyAbort(self.name, p.epoch, code, self.highest))
        if p.keys is not None and p.stage != "gather":
            sink.act(Retire(self.name, p.epoch))  # an inbound SA may be installed already
        self.pending = None
        self.failures += 1
        t = self.timers
        backoff = min(t.retry_cap, t.retry_base * 2 ** min(self.failures - 1, 16))
        backoff *= 1 + self._rng.uniform(-t.retry_jitter, t.retry_jitter)
        if p.initiator:  # only the side that started it retries: no self-inflicted collisions
            self.retry_at = now + backoff
