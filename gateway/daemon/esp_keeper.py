"""One ESP tunnel's keys in the kernel: the XFRM counterpart of the WireGuard keeper.

The protocol core drives a make-before-break rollover (gateway.protocol.events); this keeper
performs each step on the tunnel's :class:`~gateway.dataplane.xfrm.EspTunnel`:

* ``AllocateSpi``  -> :meth:`allocate_spi`: the kernel reserves our inbound SPI (ALLOCSPI);
* ``InstallKeys``  -> :meth:`install_inbound`: the inbound SA for ``spi_in`` with ``esp_in``;
* ``Activate``     -> :meth:`activate_keys`: the outbound SA for ``spi_out`` with ``esp_out``
  replaces the previous one; from this moment it is the key in use (unlike WireGuard, whose PSK
  waits for the next handshake): the kernel sends on the newest SA at once;
* ``Retire``       -> :meth:`retire`: the superseded (or abandoned) epoch's inbound SA goes;
* ``Expire`` / ``reject_after`` passed -> fail closed: every SA of the tunnel is deleted and the
  policies stay, so matching packets are dropped by the kernel, never sent in clear.

Kernel notifications (gateway.daemon.esp_events) arrive as :meth:`on_sa_expired`: a soft
lifetime on a current SA asks the core for a rekey now; a hard one on a current SA means the
kernel removed it (the backstop): the tunnel fails closed until the next rekey.

A key is never installed twice. AES-GCM's nonce is the SA's sequence number: re-adding an SA
with the same key would start the counter again and repeat nonces. So drift found by
:meth:`verify` is repaired with new keys (a rekey at once) and, where an SA holds a key other
than the recorded one, by failing closed; policies are restored by the data plane itself.

A restarted daemon resumes only if the state directory's epoch is valid on the boot clock AND
the kernel still holds that epoch's two SAs (GETSA by the recorded SPIs) whose keys match the
recorded fingerprint; otherwise the tunnel starts closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.daemon.clock import Clock
from gateway.daemon.lifetime import Alarm, Emit, KeyLifetime, refusal
from gateway.daemon.state import StateStore, TunnelState, fingerprint
from gateway.dataplane.xfrm import EspTunnelStatus, SaAcquire, SaExpired
from gateway.keymaterial import Secret

if TYPE_CHECKING:
    from gateway.protocol import TunnelKeys

__all__ = ["EspDataplane", "EspKeeper", "esp_fingerprint"]


class EspDataplane(Protocol):
    """What the keeper uses of :class:`~gateway.dataplane.xfrm.EspTunnel`."""

    rekey_needed: bool

    async def prepare(self) -> list[str]: ...
    async def allocate_spi(self) -> int: ...
    async def install_inbound(self, spi: int, key: Secret) -> None: ...
    async def activate_outbound(self, spi: int, key: Secret) -> None: ...
    async def retire_inbound(self, spi: int) -> bool: ...
    async def fail_closed(self, reason: str, *, ensure_policies: bool = True) -> int: ...
    async def reconcile(self) -> list[str]: ...
    async def held_keys(self, spi_in: int, spi_out: int
                        ) -> tuple[Secret | None, Secret | None]: ...
    async def status(self) -> EspTunnelStatus: ...
    async def teardown(self) -> None: ...
    def classify(self, event: SaExpired) -> Literal["inbound", "outbound", "larval", "other"]: ...
    def owns(self, event: SaExpired | SaAcquire) -> bool: ...
    def close(self) -> None: ...


def esp_fingerprint(tunnel: str, epoch: int, key_in: Secret, key_out: Secret) -> str:
    """The state file's fingerprint of an epoch's two ESP keys (one-way, see state.py)."""
    return fingerprint(tunnel, epoch, Secret(key_in.reveal() + key_out.reveal()))


class EspKeeper(KeyLifetime):
    kind = "esp"

    def __init__(self, name: str, reject_after: float, tunnel: EspDataplane, store: StateStore,
                 emit: Emit, alarm: Alarm, *, clock: Clock | None = None,
                 rekey: Callable[[str, str], None] | None = None) -> None:
        super().__init__(name, reject_after, store, emit, alarm, clock)
        self.tunnel = tunnel
        #: Asks the protocol core for a rekey now: (tunnel, why). Set by the daemon.
        self.rekey = rekey
        self._spis: dict[int, int] = {}  # epoch -> our inbound SPI, until that epoch's Retire
        self._active: tuple[int, int] | None = None  # (spi_in, spi_out) of the epoch in use
        self._orphans: set[int] = set()  # inbound SAs found at start that no epoch claims
        self._ensure_policies = True  # False in `qkd-gateway failsafe`: it only removes SAs
        self._next: EspDataplane | None = None  # a reload's re-planned tunnel (see respec)

    # -- the protocol's actions ----------------------------------------------------------------
    async def allocate_spi(self, epoch: int) -> int:
        spi = await self.tunnel.allocate_spi()
        self._spis[epoch] = spi
        return spi

    async def install_inbound(self, epoch: int, keys: TunnelKeys) -> None:
        self._spis[epoch] = keys.spi_in
        await self.tunnel.install_inbound(keys.spi_in, keys.esp_in)

    async def activate_keys(self, epoch: int, keys: TunnelKeys,
                            rekey_s: float | None = None) -> None:
        """Switch the outbound SA to the new epoch. Raises if the kernel refused it; the previous
        outbound SA then stays in use (until its own deadline)."""
        if epoch <= self.epoch:
            raise ValueError(f"epoch {epoch} of tunnel {self.name} is not newer than {self.epoch}")
        async with self._write:
            await self.tunnel.activate_outbound(keys.spi_out, keys.esp_out)
            previous = self.epoch
            self._spis[epoch] = keys.spi_in
            self._active = (keys.spi_in, keys.spi_out)
            # Epochs older than the one just superseded were retired by the core (or abandoned
            # before it could: an SPI allocated for an exchange that never computed keys gets
            # no Retire). Nobody sends on them now; their SAs, if any, go below.
            stale = {self._spis.pop(e) for e in [e for e in self._spis if e < previous]}
            now = self._clock.now()
            self._activated(TunnelState(
                self.name, epoch, self._clock.wall(), keys.key_ids, keys.mode,
                "+".join(keys.achieved), self._clock.boot_id, now,
                esp_fingerprint(self.name, epoch, keys.esp_in, keys.esp_out),
                spi_in=keys.spi_in, spi_out=keys.spi_out), rekey_s)
            orphans, self._orphans = (self._orphans | stale) - {keys.spi_in}, set()
        for spi in sorted(orphans):  # older than the previous epoch: nobody sends on them
            with contextlib.suppress(Exception):
                await self.tunnel.retire_inbound(spi)

    async def retire(self, epoch: int) -> None:
        """The epoch's inbound SA (superseded after the grace period, or of an abandoned
        exchange: then possibly still larval) goes."""
        spi = self._spis.pop(epoch, None)
        if spi is not None:
            await self.tunnel.retire_inbound(spi)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.tunnel.prepare()
        st = self._state = self._load()
        why = refusal(st, self._clock, self._reject_after)
        if why is None and st is not None and not (st.spi_in and st.spi_out):
            why = "the state records no SPIs"
        if why is None and st is not None:
            key_in, key_out = await self.tunnel.held_keys(st.spi_in, st.spi_out)
            if key_in is None or key_out is None or esp_fingerprint(
                    self.name, st.epoch, key_in, key_out) != st.key_fingerprint:
                why = ("the kernel does not hold the SAs recorded in the state directory "
                       "(deleted, expired, or replaced)")
        if why is None and st is not None:
            self._active = (st.spi_in, st.spi_out)
            self._spis[st.epoch] = st.spi_in
            status = await self.tunnel.status()
            self._orphans = {sa.spi for sa in status.inbound if sa.spi != st.spi_in}
            self._resumed()
        else:
            await self._fail_closed(f"no valid key at start: {why}")

    async def failsafe(self, horizon: float) -> str | None:
        """As the WireGuard keeper's, but only our SAs are removed: the policies are left as
        they are (a torn-down tunnel is not re-created by the failsafe)."""
        self._ensure_policies = False
        return await super().failsafe(horizon)

    def _close_failed_text(self) -> str:
        return "could not remove its SAs"

    async def verify(self) -> bool:
        """Restore the tunnel's policies (the data plane's reconcile) and check that the kernel
        still holds the epoch's SAs with the recorded keys. A lost SA is replaced by a rekey at
        once; an SA holding another key fails the tunnel closed. True if something was
        corrected or closed."""
        async with self._write:
            if self._close_pending is not None:
                return False  # the deadline scheduler is already retrying
            fixed = bool(await self.tunnel.reconcile())
            st, active = self._state, self._active
            if self._closed or st is None or active is None:
                return fixed
            key_in, key_out = await self.tunnel.held_keys(*active)
            if key_in is None or key_out is None:
                lost = "inbound" if key_in is None else "outbound"
            elif esp_fingerprint(self.name, st.epoch, key_in, key_out) == st.key_fingerprint:
                return fixed
            else:
                self._emit("tunnel_key_drift", level="warning", tunnel=self.name,
                           epoch=st.epoch, slot="another key")
                await self._fail_closed_locked("an SA of the tunnel holds a key the gateway did "
                                               "not install", rewrite=True)
                self._rearm()
                return True
        # Never re-install the lost SA's key (nonce reuse, see the module doc): new keys now.
        self._emit("tunnel_key_drift", level="warning", tunnel=self.name, epoch=st.epoch,
                   slot=f"{lost} SA missing")
        self.request_rekey(f"the {lost} SA is gone")
        return fixed

    def respec(self, tunnel: EspDataplane) -> None:
        """A reload changed the tunnel's settings: ``tunnel`` (same reqid) takes over at the
        next :meth:`reconcile`; its prepare() adopts our SAs and replaces the policies."""
        self._next = tunnel

    async def reconcile(self) -> list[str]:
        """For the reload path (TunnelSet.take_dirty): apply a pending respec now."""
        async with self._write:
            if self._next is None:
                return []
            old, self.tunnel, self._next = self.tunnel, self._next, None
            old.close()
            return await self.tunnel.prepare()

    async def close(self, teardown: bool) -> None:
        """Daemon shutdown: ``teardown`` removes the tunnel's SAs, policies (and interface);
        otherwise they stay, bounded by their hard lifetime and by `qkd-gateway failsafe`."""
        try:
            if teardown:
                await self.tunnel.teardown()
        finally:
            self.tunnel.close()

    # -- kernel notifications ------------------------------------------------------------------
    def request_rekey(self, why: str) -> None:
        if self.rekey is not None:
            self.rekey(self.name, why)

    async def on_sa_expired(self, event: SaExpired) -> None:
        which = self.tunnel.classify(event)
        active = self._active
        current = active is not None and (
            (which == "inbound" and event.spi == active[0])
            or (which == "outbound" and event.spi == active[1]))
        fields: dict[str, Any] = {"tunnel": self.name, "spi": f"0x{event.spi:08x}",
                                  "direction": which, "hard": event.hard}
        if not current:
            # A larval SPI whose exchange was abandoned, or a superseded SA: nothing in use.
            self._emit("esp_sa_expired", **fields)
            return
        if not event.hard:
            self._emit("esp_sa_soft_expired", **fields)
            self.request_rekey("soft lifetime reached")
            return
        self._emit("esp_sa_hard_expired", level="warning", **fields)
        await self.expire(f"the kernel removed the {which} SA at its hard lifetime")

    def on_acquire(self, event: SaAcquire) -> None:
        """A packet met one of our policies without an SA: dropped (expected while closed)."""
        if not self.closed:
            self._emit("esp_packets_without_sa", level="warning", tunnel=self.name)
            self.request_rekey("packets met the policy without an SA")

    async def _fail_closed_locked(self, reason: str, *, rewrite: bool = False) -> None:
        """Every SA of the tunnel goes; the policies stay (and are restored first), so packets
        that match them are dropped. If the kernel refuses, the alarm says so and the deadline
        scheduler retries until it succeeds."""
        try:
            removed = await self.tunnel.fail_closed(reason,
                                                    ensure_policies=self._ensure_policies)
        except Exception as exc:
            self._close_failed(reason, "remove SAs", str(exc), alarm=True)
            return
        self._active = None
        self._spis.clear()
        self._orphans.clear()
        self._closed_done(reason, sas_removed=removed)

    def status_stamp(self) -> tuple[Any, ...]:
        return (*super().status_stamp(), self._active)

    def status(self) -> dict[str, Any]:
        out = super().status()
        active = None if self.closed else self._active
        out["esp"] = {
            # The outbound SA is the key in use: the kernel sends on it from its activation.
            "key_in_use_epoch": self.epoch if active is not None else None,
            "spi_in": None if active is None else f"0x{active[0]:08x}",
            "spi_out": None if active is None else f"0x{active[1]:08x}",
        }
        return out
