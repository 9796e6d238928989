"""``EspTunnel``: the lifecycle of one ESP tunnel as the daemon drives it.

    tunnel = EspTunnel(spec, netns="site-a")       # XfrmSpecError here if the spec is invalid
    await tunnel.prepare()                          # policies (+ xfrm interface); idempotent
    spi = await tunnel.allocate_spi()               # our inbound SPI, sent to the peer
    await tunnel.install_inbound(spi, esp_in)       # we can receive on the new SA
    await tunnel.activate_outbound(peer_spi, esp_out)   # send on the new SA, drop the old one
    await tunnel.retire_inbound(old_spi)            # after the grace period
    await tunnel.fail_closed("no key")              # policies stay, SAs go: nothing leaves
    await tunnel.reconcile() -> list[str];  await tunnel.status();  await tunnel.teardown()

Invariants: the tunnel's policies exist from prepare() to teardown() and are only ever replaced
atomically (UPDPOLICY), so there is never an instant without them; every SA write is read back
(GETSA) and compared with what was meant, key included (SaMismatch deletes the bad SA); only
objects carrying the tunnel's reqid are touched (plan.py). Calls on one tunnel are serialised.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import structlog

from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.client import XfrmClient
from gateway.dataplane.xfrm.errors import (
    SaMismatch,
    XfrmError,
    XfrmNotFound,
    XfrmOwnershipConflict,
    XfrmSpecError,
)
from gateway.dataplane.xfrm.iface import XfrmInterface
from gateway.dataplane.xfrm.model import (
    EspTunnelStatus,
    SaAcquire,
    SaExpired,
    SaParams,
    SaState,
    SaStatus,
    sa_status,
    spi_hex,
)
from gateway.dataplane.xfrm.plan import (
    owns_policy,
    owns_sa,
    plan_policies,
    readback_problems,
    sa_params,
)
from gateway.dataplane.xfrm.spec import EspTunnelSpec, resolve
from gateway.keymaterial import Secret

__all__ = ["EspTunnel"]

log = structlog.get_logger("gateway.dataplane.xfrm")


class EspTunnel:
    """One ESP tunnel in network namespace ``netns`` (None: the daemon's own)."""

    def __init__(self, spec: EspTunnelSpec, *, netns: str | None = None,
                 timeout: float = c.XFRM_TIMEOUT) -> None:
        self._r = resolve(spec)
        self.netns = netns
        self._x = XfrmClient(netns, timeout=timeout)
        self._iface = (XfrmInterface(spec.ifname, spec.if_id, netns)
                       if spec.mode == "route" and spec.ifname and spec.if_id else None)
        self._lock = asyncio.Lock()
        self._larval: set[int] = set()
        self._inbound: set[int] = set()
        self._outbound: int | None = None  # the SA we send on
        self._outbound_all: set[int] = set()  # every outbound SA of ours still in the kernel
        self.rekey_needed = False
        self.failed_closed = False
        self._log = log.bind(tunnel=spec.name, reqid=spec.reqid, netns=netns, mode=spec.mode)

    @property
    def spec(self) -> EspTunnelSpec:
        return self._r.spec

    def owns(self, event: SaExpired | SaAcquire) -> bool:
        """Is this monitor event about one of this tunnel's SAs or policies?"""
        return event.reqid == self._r.spec.reqid

    def classify(self, event: SaExpired) -> Literal["inbound", "outbound", "larval", "other"]:
        """Which of this tunnel's SAs an expiry is about: "larval" is an allocated SPI whose
        exchange did not finish in time; "other" is an SA this object does not track (not this
        tunnel's, or already retired)."""
        if not self.owns(event):
            return "other"
        if event.spi in self._larval:
            return "larval"
        if event.spi in self._inbound and event.dst == self._r.local:
            return "inbound"
        if event.spi == self._outbound and event.dst == self._r.remote:
            return "outbound"
        return "other"

    def close(self) -> None:
        """Close the netlink socket (the kernel state stays; see teardown())."""
        self._x.close()

    # -- set-up and repair -------------------------------------------------------------------
    async def prepare(self) -> list[str]:
        """Create or adopt the policies (and in route mode the interface and its routes), and
        learn which of our SAs exist already. Returns the drift corrected ([] on a fresh
        install). XfrmOwnershipConflict, before any change, if a slot belongs to someone else."""
        async with self._lock:
            corrections = await self._sync_links_and_policies(strict=True)
            await self._adopt_sas()
            return corrections

    async def _sync_links_and_policies(self, *, strict: bool) -> list[str]:
        r, name = self._r, self._r.spec.name
        existing = await self._x.policies()
        plan = plan_policies(r, existing)
        if plan.conflicts and strict:
            held = "; ".join(f"{want.describe()} is held by reqid "
                             f"{', '.join(str(t.reqid) for t in have.templates) or '(none)'}"
                             for want, have in plan.conflicts)
            raise XfrmOwnershipConflict(
                f"{name}: {held}: another IPsec daemon or the operator owns these policies; "
                "change the tunnel's subnets (or mark/if_id), or remove theirs")
        corrections: list[str] = []
        if self._iface is not None:
            _, corrections = await self._iface.ensure(r.remote_nets)
        fresh = not any(owns_policy(r, p) for p in existing)
        for p in plan.create:
            await self._x.add_policy(p)
        for p in plan.update:
            await self._x.update_policy(p)  # atomic replace: no gap
        for old in plan.remove:  # only after the wanted ones are in place
            await self._x.delete_policy(old.selector, old.direction, mark=old.mark,
                                        if_id=old.if_id)
        if not fresh:  # a first install is not drift
            corrections += plan.corrections(name)
        corrections += [f"{name}: {want.describe()} is held by another owner; left alone"
                        for want, _ in plan.conflicts]
        for line in corrections:
            self._log.warning("xfrm_drift_corrected", correction=line)
        if fresh and plan.create:
            self._log.info("xfrm_policies_installed", policies=len(plan.create))
        return corrections

    async def _ours(self) -> list[SaState]:
        return [sa for sa in await self._x.sas() if owns_sa(self._r, sa)]

    async def _adopt_sas(self) -> None:
        r = self._r
        newest: SaState | None = None
        for sa in await self._ours():
            if sa.dst == r.local:
                (self._larval if sa.larval else self._inbound).add(sa.spi)
            elif sa.dst == r.remote:
                self._outbound_all.add(sa.spi)
                if newest is None or sa.add_time >= newest.add_time:
                    newest = sa
        self._outbound = newest.spi if newest is not None else None

    async def reconcile(self) -> list[str]:
        """Restore policies (and interface/routes) deleted or changed by hand; report SAs that
        vanished (those need keys: ``rekey_needed`` is set for the daemon to rekey)."""
        async with self._lock:
            corrections = await self._sync_links_and_policies(strict=False)
            if self.failed_closed:
                return corrections
            name, r = self._r.spec.name, self._r
            present = {(sa.dst, sa.spi): sa for sa in await self._ours()}
            lost: list[str] = []
            for spi in sorted(self._inbound):
                if (r.local, spi) not in present:
                    self._inbound.discard(spi)
                    lost.append(f"{name}: inbound SA {spi_hex(spi)} is gone (deleted "
                                "outside the gateway?); rekey needed")
                    self.rekey_needed = True
            for spi in sorted(self._larval):
                if (r.local, spi) not in present:
                    self._larval.discard(spi)
                    lost.append(f"{name}: allocated SPI {spi_hex(spi)} expired before it "
                                "was installed (kernel acquire timeout)")
            if self._outbound is not None and (r.remote, self._outbound) not in present:
                lost.append(f"{name}: outbound SA {spi_hex(self._outbound)} is gone; "
                            "nothing is sent until a rekey")
                self._outbound = None
                self.rekey_needed = True
            self._outbound_all = {spi for dst, spi in present if dst == r.remote}
            known = self._inbound | self._larval | self._outbound_all
            for (dst, spi), sa in sorted(present.items(), key=lambda kv: kv[0][1]):
                if dst == r.local and spi not in known:
                    lost.append(f"{name}: {'larval' if sa.larval else 'inbound'} SA "
                                f"{spi_hex(spi)} is not one this tunnel installed; adopted")
                    (self._larval if sa.larval else self._inbound).add(spi)
            for line in lost:
                self._log.warning("xfrm_sa_lost", correction=line)
            return corrections + lost

    # -- keys ----------------------------------------------------------------------------------
    async def allocate_spi(self) -> int:
        """Reserve an inbound SPI (>= 256) as a larval SA. It must be installed within the
        kernel's acquire timeout (30 s by default) or released with release_spi()."""
        async with self._lock:
            r = self._r
            spi = await self._x.allocate_spi(r.remote, r.local, r.spec.reqid, mark=r.spec.mark,
                                             if_id=r.if_id)
            self._larval.add(spi)
            self._log.info("xfrm_spi_allocated", spi=spi_hex(spi))
            return spi

    def _check(self, spi: int, key: Secret) -> None:
        name = self._r.spec.name
        if not c.SPI_MIN <= spi <= c.SPI_MAX:
            raise XfrmSpecError(f"{name}: SPI {spi} is outside {c.SPI_MIN}..{c.SPI_MAX} "
                                "(0 is invalid, 1-255 are reserved)")
        if len(key) != c.AEAD_KEY_LEN:
            raise XfrmSpecError(f"{name}: an ESP key for {c.AEAD_ALGORITHM} is "
                                f"{c.AEAD_KEY_LEN} bytes (AES-256 key + salt), got {len(key)}")

    async def _write_checked(self, want: SaParams, existing: SaState | None) -> None:
        """Install ``want``: UPDSA over our larval SA, NEWSA if there is none; read it back."""
        label = f"{self._r.spec.name}: SA {spi_hex(want.spi)}"
        if existing is not None and not owns_sa(self._r, existing):
            raise XfrmOwnershipConflict(f"{label} to {want.dst} exists with reqid "
                                        f"{existing.reqid}: not this tunnel's")
        if existing is not None and not existing.larval:
            if readback_problems(want, existing):
                raise XfrmError(f"{label} is installed already with other parameters; "
                                "allocate a new SPI for a new key")
            return  # the same SA again: nothing to do
        try:
            if existing is not None:
                await self._x.update_sa(want)
            else:
                await self._x.add_sa(want)
        except XfrmNotFound:  # the larval SA expired between the read and the update
            await self._x.add_sa(want)
        problems = readback_problems(want, await self._x.get_sa(want.dst, want.spi,
                                                                 mark=want.mark))
        if problems:
            await self._x.delete_sa(want.dst, want.spi, mark=want.mark)
            raise SaMismatch(f"{label} read back wrong ({'; '.join(problems)}); deleted it")

    async def install_inbound(self, spi: int, key: Secret) -> None:
        """Make the allocated ``spi`` a full inbound SA with ``key`` (36 bytes); idempotent."""
        self._check(spi, key)
        async with self._lock:
            r = self._r
            want = sa_params(r, inbound=True, spi=spi, key=key)
            await self._write_checked(want, await self._x.get_sa(r.local, spi, mark=r.spec.mark))
            self._larval.discard(spi)
            self._inbound.add(spi)
            self._log.info("xfrm_sa_installed", direction="in", spi=spi_hex(spi))

    async def activate_outbound(self, spi: int, key: Secret) -> None:
        """Send on a new outbound SA (the peer's ``spi`` with ``key``), then delete the previous
        outbound SA: make before break. The kernel prefers the newest SA at once, so packets
        never meet a moment without an SA; the peer keeps the old inbound SA for its grace."""
        self._check(spi, key)
        async with self._lock:
            r = self._r
            want = sa_params(r, inbound=False, spi=spi, key=key)
            await self._write_checked(want, await self._x.get_sa(r.remote, spi,
                                                                  mark=r.spec.mark))
            # The older outbound SAs this object knows of (installed or adopted by prepare());
            # reconcile() reports any other. No dump: its cost grows with every tunnel's SAs.
            old = sorted(self._outbound_all - {spi})
            for old_spi in old:
                await self._x.delete_sa(r.remote, old_spi, src=r.local, mark=r.spec.mark)
            self._outbound_all = {spi}
            previous, self._outbound = self._outbound, spi
            self.failed_closed = self.rekey_needed = False
            self._log.info("xfrm_outbound_switched", spi=spi_hex(spi),
                           previous=spi_hex(previous) if previous is not None else None,
                           removed=len(old))

    async def retire_inbound(self, spi: int) -> bool:
        """Delete an inbound SA (the superseded one, after the grace period) or a larval SA.
        False if it was already gone. Refuses SAs that are not this tunnel's."""
        async with self._lock:
            r = self._r
            have = await self._x.get_sa(r.local, spi, mark=r.spec.mark)
            if have is not None and not owns_sa(r, have):
                raise XfrmOwnershipConflict(f"{r.spec.name}: SA {spi_hex(spi)} to {r.local} has "
                                            f"reqid {have.reqid}: not this tunnel's")
            deleted = have is not None and await self._x.delete_sa(r.local, spi,
                                                                   mark=r.spec.mark)
            self._inbound.discard(spi)
            self._larval.discard(spi)
            self._log.info("xfrm_sa_retired", direction="in", spi=spi_hex(spi), deleted=deleted)
            return deleted

    async def release_spi(self, spi: int) -> bool:
        """Give back an allocated SPI whose exchange was abandoned (same as retire_inbound)."""
        return await self.retire_inbound(spi)

    async def fail_closed(self, reason: str, *, ensure_policies: bool = True) -> int:
        """Stop all traffic of the tunnel: make sure the policies (and interface/routes) are in
        place first, then delete every SA of the tunnel, larval ones included. Packets that
        match the policies are then dropped by the kernel (no SA); none leaves in clear.
        ``ensure_policies=False`` (`qkd-gateway failsafe`, no daemon running) deletes the SAs
        only and leaves policies as they are: a tunnel torn down on purpose is not re-created.
        Returns the number of SAs deleted."""
        async with self._lock:
            if ensure_policies:
                await self._sync_links_and_policies(strict=False)
            removed = 0
            for sa in await self._ours():
                removed += await self._x.delete_sa(sa.dst, sa.spi, src=sa.src, mark=sa.mark)
            left = await self._ours()
            if left:
                raise XfrmError(f"{self._r.spec.name}: {len(left)} SA(s) survived fail_closed "
                                f"({', '.join(spi_hex(sa.spi) for sa in left)})")
            self._larval.clear()
            self._inbound.clear()
            self._outbound_all.clear()
            self._outbound = None
            self.failed_closed = True
            self._log.warning("xfrm_failed_closed", reason=reason, sas_removed=removed)
            return removed

    async def held_keys(self, spi_in: int, spi_out: int) -> tuple[Secret | None, Secret | None]:
        """The keys of this tunnel's inbound SA ``spi_in`` and outbound SA ``spi_out`` as the
        kernel holds them (GETSA), None for one that is missing, larval or not this tunnel's.
        For a restarted daemon to check that the kernel still holds the keys it recorded (by
        fingerprint); the Secrets never leave the daemon."""
        async with self._lock:
            r = self._r
            held: list[Secret | None] = []
            for dst, spi in ((r.local, spi_in), (r.remote, spi_out)):
                sa = await self._x.get_sa(dst, spi, mark=r.spec.mark) if spi else None
                held.append(sa.key if sa is not None and owns_sa(r, sa) and not sa.larval
                            else None)
            return held[0], held[1]

    async def teardown(self) -> None:
        """Remove everything of this tunnel (SAs, then policies, then the interface) and
        nothing else."""
        async with self._lock:
            sas, policies = await self._x.flush_owned({self._r.spec.reqid})
            removed_link = await self._iface.remove() if self._iface is not None else False
            self._larval.clear()
            self._inbound.clear()
            self._outbound_all.clear()
            self._outbound = None
            self._log.info("xfrm_tunnel_removed", sas=sas, policies=policies,
                           interface=removed_link)

    async def status(self) -> EspTunnelStatus:
        async with self._lock:
            r = self._r
            ours = await self._ours()
            policies = sum(owns_policy(r, p) for p in await self._x.policies())

        def pick(direction: Literal["in", "out"]) -> tuple[SaStatus, ...]:
            dst = r.local if direction == "in" else r.remote
            return tuple(sa_status(sa, direction)
                         for sa in sorted(ours, key=lambda s: (s.add_time, s.spi))
                         if sa.dst == dst)

        return EspTunnelStatus(
            name=r.spec.name, reqid=r.spec.reqid, mode=r.spec.mode, policies=policies,
            inbound=pick("in"), outbound=pick("out"),
            outbound_spi=self._outbound, failed_closed=self.failed_closed,
            rekey_needed=self.rekey_needed)
