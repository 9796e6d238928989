"""Per-tunnel rekey exchange (runs inside an authenticated control session).

::

    initiator (takes QKD keys = master SAE)           responder (fetches by key ID = slave SAE)
    GATHER: TakeQkdKeys per path, AllocateSpi
    RekeyInit(epoch, mode, key_IDs, ek, X_i, N_i, SPI_i) ->
                                                      GATHER: FetchQkdKeys per path, AllocateSpi
                                                      derive; InstallKeys (inbound) ... Installed
                                   <- RekeyResp(mask, ct, X_r, N_r, SPI_r, MAC_r)
    derive, check MAC_r; InstallKeys ... Installed
    RekeyConfirm(MAC_i) ->; Activate                  check MAC_i; Activate
                                   <- Keepalive(epoch, key check)   (the acknowledgement)

Either side may abort with RekeyAbort. QKD keys whose IDs were sent to the peer are then
discarded (whatever the peer answers: a key ID the peer has seen is never offered again); keys
whose IDs never left this host (aborted while gathering, a collision lost before our RekeyInit
went out, a take answered after its attempt ended) are kept as spares for the next attempt.
Every discarded key is reported (``KeysDiscarded`` with a reason). Only the initiator retries.
Collisions: the side with the lower SAE ID wins once its RekeyInit is out; the other drops its
attempt. A side still gathering yields to the peer's RekeyInit at no cost, and the preferred side
whose gathering ends when the backup steps in keeps its keys and stands by (no crossing). Timers,
activation, key checks, retries and the spares are in tunnel.py.
"""

from __future__ import annotations

import os

from gateway.protocol import combiner as cb
from gateway.protocol.constants import NONCE_LEN, QKD_KEY_LEN, SPI_MIN
from gateway.protocol.errors import PolicyError
from gateway.protocol.events import (
    ActivateFailed,
    Alarm,
    AllocateSpi,
    Event,
    FetchQkdKeys,
    Installed,
    InstallFailed,
    InstallKeys,
    KeysDiscarded,
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
    check_init,
    epoch_bound,
    macs_equal,
    next_epoch,
    offered_mask,
    qkd_secrets,
    spi_ok,
    transcript,
    tunnel_keys,
)
from gateway.protocol.inner import (
    AbortCode,
    InnerMessage,
    RekeyAbort,
    RekeyConfirm,
    RekeyInit,
    RekeyResp,
)
from gateway.protocol.policy import Achieved, Kind, Mode, check_achieved
from gateway.protocol.tunnel import TunnelState

__all__ = ["Tunnel"]


class Tunnel(TunnelState):
    """One tunnel towards one peer: the exchange transitions."""

    __slots__ = ()  # a subclass without slots would bring back a dict per tunnel

    # -- initiator ---------------------------------------------------------------------------
    def start(self, now: float, sink: Sink) -> None:
        epoch = next_epoch(max(self.highest, self.last_attempt), preferred=self.preferred)
        self.last_attempt, self.waiting = epoch, False
        p = self.pending = Exchange(True, epoch, now, set())
        for k in self.policy.kms:
            spare = self.take_spare(k, now, sink)
            if spare is not None:
                p.key_ids[k], p.qkd[k], p.since[k] = spare
            else:
                p.waiting.add(f"kms:{k}")
                sink.act(TakeQkdKeys(self.name, epoch, k, self.peer_sae))
        if self.policy.kind is Kind.ESP:
            p.waiting.add("spi")
            sink.act(AllocateSpi(self.name, epoch))
        self._gathered(now, sink)

    def _send_init(self, p: Exchange, now: float, sink: Sink) -> None:
        eph = p.eph = sink.ephemerals().initiator(self.name, now)
        ek = eph.ek() if self.policy.mode.uses_mlkem else b""
        key_ids = tuple(p.key_ids.get(k, "") if p.qkd.get(k) is not None else ""
                        for k in self.policy.kms)
        p.init = RekeyInit(self.name, p.epoch, self.policy.mode, key_ids, ek, eph.x_pub,
                           os.urandom(NONCE_LEN), p.spi)
        p.stage = "await_resp"
        sink.send(p.init)

    def _on_resp(self, m: RekeyResp, now: float, sink: Sink) -> None:
        p = self.pending
        if p is None or not p.initiator or p.stage != "await_resp" or m.epoch != p.epoch:
            return  # late or foreign: the exchange it belongs to is gone
        assert p.init is not None and p.eph is not None
        offered = offered_mask(p.init)
        try:
            if bool(m.mlkem_ct) != bool(p.init.mlkem_ek) or not spi_ok(self.policy, m.spi):
                raise PolicyError("response does not match the request")
            if m.qkd_mask & ~offered or (m.qkd_mask != offered and self.policy.mode is not
                                          Mode.ANY):
                raise PolicyError("responder left out a QKD path the mode requires")
            ss_kem = p.eph.decapsulate(m.mlkem_ct) if p.init.mlkem_ek else None
            ss_x = p.eph.exchange(m.x25519)
            p.eph = None  # consumed: the burst's pair dies with the last exchange holding it
        except (ValueError, PolicyError):
            self._abort(sink, AbortCode.POLICY, now, tell_peer=True)
            return
        t = transcript(self.policy, p.init, m, self.local_sae, self.peer_sae)
        keys = cb.combine(cb.CombinerSecrets(ss_kem, qkd_secrets(self.policy, p, m.qkd_mask),
                                             ss_x), t)
        if not macs_equal(cb.confirm_mac(keys.confirm_r, keys.transcript_hash), m.mac):
            sink.act(Alarm("rekey_confirm_failed", self.peer, self.name, "responder MAC wrong"))
            self._abort(sink, AbortCode.BAD_MAC, now, tell_peer=True)
            return
        for n, kms in enumerate(self.policy.kms):
            if m.qkd_mask >> n & 1:
                self.used.add(kms, (p.key_ids[kms],))  # derived from: used
            elif offered >> n & 1:
                self._path_dropped(kms, "the peer could not fetch its key", sink)
                p.qkd.pop(kms, None)
                sink.act(KeysDiscarded(self.name, p.epoch, kms, 1, "peer_fetch_failed", True))
        p.keys, p.resp, p.stage = keys, m, "installing"
        mine = tunnel_keys(self.policy, t, keys, local_initiator=True, spi_in=p.init.spi,
                           spi_out=m.spi)
        sink.act(InstallKeys(self.name, p.epoch, mine))

    # -- responder ---------------------------------------------------------------------------
    def _on_init(self, m: RekeyInit, now: float, sink: Sink) -> None:
        p = self.pending
        if p is not None and p.initiator:
            if self.preferred and p.stage != "gather":
                return  # collision, we win: the peer drops its attempt when it sees ours
            # Collision, we lose: the winner ignores our RekeyInit, so the keys whose IDs it
            # carried are spent. Still gathering (the preferred side too: under load its start
            # waits for an exchange slot and the KMS, and the backup steps in), nobody has seen
            # our key IDs: we yield to the peer's RekeyInit and keep the keys for next time.
            if p.stage == "gather":
                self.salvage(p, now)
            else:
                self.discard(p, "collision", sink)
            if p.keys is not None:
                sink.act(Retire(self.name, p.epoch))
            p = self.pending = None
        in_flight = p.key_ids if p is not None else {}
        code, alarm = check_init(self.policy, m, self.highest, self.last_attempt, self.used,
                                 enabled=self.enabled_at is not None,
                                 peer_preferred=not self.preferred, synced=self.synced,
                                 in_flight=in_flight)
        if alarm is not None:
            sink.act(Alarm(alarm[0], self.peer, self.name, alarm[1]))
        if code is not None:
            sink.send(RekeyAbort(self.name, m.epoch, code, self.highest))
            return
        if p is not None:  # a newer request replaces an unfinished one
            if p.keys is not None:
                sink.act(Retire(self.name, p.epoch))
            self.discard(p, "superseded", sink)
        self.highest = m.epoch
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
            ephemerals = sink.ephemerals()
            if m.mlkem_ek:
                ss_kem, ct = ephemerals.encapsulate(m.mlkem_ek)
            eph = p.eph = ephemerals.responder(self.name, now)
            ss_x = eph.exchange(m.x25519)
        except ValueError:
            self._abort(sink, AbortCode.POLICY, now, tell_peer=True)
            return
        mask = sum(1 << n for n, k in enumerate(self.policy.kms) if p.qkd.get(k) is not None)
        resp = RekeyResp(self.name, p.epoch, mask, ct, eph.x_pub, os.urandom(NONCE_LEN), p.spi,
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
        self._done(p, now, sink)

    # -- shared ------------------------------------------------------------------------------
    def on_message(self, m: InnerMessage, now: float, sink: Sink) -> None:
        if isinstance(m, RekeyInit):
            self._on_init(m, now, sink)
        elif isinstance(m, RekeyResp):
            self._on_resp(m, now, sink)
        elif isinstance(m, RekeyConfirm):
            self._on_confirm(m, now, sink)
        elif isinstance(m, RekeyAbort):
            self._on_abort(m, now, sink)

    def _on_abort(self, m: RekeyAbort, now: float, sink: Sink) -> None:
        adopted = False
        if m.highest_epoch <= epoch_bound(self.highest, self.last_attempt, synced=self.synced):
            adopted = m.highest_epoch > self.last_attempt
            self.last_attempt = max(self.last_attempt, m.highest_epoch)
        p = self.pending
        if p is not None and p.epoch == m.epoch:
            self._abort(sink, m.code, now, tell_peer=False,
                        reason="peer_refused" if p.initiator else "abort")
            if m.code is AbortCode.STALE_EPOCH and adopted and p.initiator:
                self.failures = max(0, self.failures - 1)
                self.retry_at = now  # resynchronised: retry at once (with new keys)
        elif m.epoch == self.active_epoch and m.epoch:
            # The peer never switched to the epoch we activated (our RekeyConfirm came too late)
            # or could not: rekey now rather than run on mismatched keys until the next rekey.
            name = ("peer_activate_failed" if m.code is AbortCode.ACTIVATE_FAILED
                    else "epoch_not_confirmed")
            sink.act(Alarm(name, self.peer, self.name,
                           f"peer aborted epoch {m.epoch} after it was activated here"))
            self.unacked = None
            self._repair(now)

    def on_event(self, ev: Event, now: float, sink: Sink) -> None:
        if isinstance(ev, ActivateFailed):
            self.on_activate_failed(ev.epoch, ev.reason, now, sink)
            return
        p = self.pending
        if p is None or ev.epoch != p.epoch or (
                isinstance(ev, KeysTaken | KeysTakeFailed) != p.initiator and isinstance(
                    ev, KeysTaken | KeysTakeFailed | KeysFetched | KeysFetchFailed)):
            # A result for an abandoned exchange (a take answers only our own attempt, a fetch
            # only the peer's).
            if isinstance(ev, KeysTaken | KeysFetched):
                self.orphan_keys(ev, now, sink)
            return
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
            self._path_dropped(ev.kms, ev.reason, sink)
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
                self._done(p, now, sink)
            else:
                assert p.resp is not None
                p.stage = "await_confirm"
                sink.send(p.resp)
        elif isinstance(ev, InstallFailed) and p.stage == "installing":
            sink.act(Alarm("install_failed", self.peer, self.name, ev.reason))
            self._abort(sink, AbortCode.TIMEOUT, now, tell_peer=True)

    def orphan_keys(self, ev: KeysTaken | KeysFetched, now: float, sink: Sink) -> None:
        """Keys that arrived after their exchange ended. Taken ones were never announced to
        anyone: kept as spares. Fetched ones were the peer's: reported as discarded."""
        taken = isinstance(ev, KeysTaken)
        good = [k for k in ev.keys if len(k.key) == QKD_KEY_LEN] if taken else []
        for k in good:
            self.keep_spare(ev.kms, (k.key_id, k.key, now))
        if len(ev.keys) > len(good):
            sink.act(KeysDiscarded(self.name, ev.epoch, ev.kms, len(ev.keys) - len(good),
                                   "unusable" if taken else "late", taken))

    def _on_keys(self, p: Exchange, ev: KeysTaken | KeysFetched, now: float, sink: Sink) -> None:
        tag = f"kms:{ev.kms}"
        if tag not in p.waiting:
            self.orphan_keys(ev, now, sink)  # a second answer for the same path
            return
        want = p.key_ids.get(ev.kms)
        ok = len(ev.keys) == 1 and len(ev.keys[0].key) == QKD_KEY_LEN and (
            want is None or ev.keys[0].key_id == want)
        if not ok:
            sink.act(Alarm("qkd_key_invalid", self.peer, self.name,
                           f"kms {ev.kms} returned an unusable key (need one 256-bit key"
                           + ("" if want is None else f" with ID {want}") + ")"))
            sink.act(KeysDiscarded(self.name, ev.epoch, ev.kms, len(ev.keys), "unusable",
                                   isinstance(ev, KeysTaken)))
            self._abort(sink, AbortCode.FETCH_FAILED, now, tell_peer=not p.initiator)
            return
        p.waiting.discard(tag)
        p.qkd[ev.kms] = ev.keys[0].key
        p.key_ids[ev.kms] = ev.keys[0].key_id
        p.since[ev.kms] = now
        if not p.initiator:
            self.used.add(ev.kms, (ev.keys[0].key_id,))  # delivered to us: used
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
            if self.stand_by(now):
                # Gathering outlasted the backup's margin (a mass start, a slow KMS): the backup
                # steps in about now by its own timer, and our RekeyInit would cross its, which
                # spends its key. Our key IDs never left: keep them, answer the backup instead.
                self.salvage(p, now)
                self.pending = None
                return
            self._send_init(p, now, sink)
        else:
            self._respond(p, now, sink)

    def _done(self, p: Exchange, now: float, sink: Sink) -> None:
        self._activate(p, now, sink)
        if self.paths_dropped and p.init is not None and offered_mask(p.init) == (
                (1 << len(self.policy.kms)) - 1) and (p.resp is None or p.resp.qkd_mask
                                                      == offered_mask(p.init)):
            self.paths_dropped = False
            sink.act(Alarm("qkd_path_dropped", self.peer, self.name,
                           "every QKD path delivered again", active=False))

    def _path_dropped(self, kms: str, reason: str, sink: Sink) -> None:
        self.paths_dropped = True
        sink.act(Alarm("qkd_path_dropped", self.peer, self.name,
                       f"kms {kms}: {reason}; this rekey goes on without it (mode any)"))
