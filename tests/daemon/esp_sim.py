"""An in-memory ESP data plane for the keeper's host tests (the host kernel has no ESP; the
kernel lab runs the real one: tests/vm/test_daemon_xfrm.py).

It keeps what the kernel would: inbound/outbound SAs by SPI with their keys (None while larval)
and the tunnel's policies, with EspTunnel's rules: install over a larval SA, an outbound switch
deletes the older outbound SAs, fail_closed keeps policies and removes every SA, teardown
removes both. ``broken`` makes every kernel write raise, as a refusing kernel would.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Literal

from gateway.dataplane.xfrm import (
    EspTunnelStatus,
    Lifetime,
    SaAcquire,
    SaExpired,
    SaStatus,
    XfrmKernelError,
)
from gateway.keymaterial import Secret

LOCAL, REMOTE = ip_address("192.0.2.1"), ip_address("192.0.2.2")
REQID = 0x51D0_0042


class EspSim:
    def __init__(self, reqid: int = REQID) -> None:
        self.reqid = reqid
        self.inbound: dict[int, Secret | None] = {}
        self.outbound: dict[int, Secret] = {}
        self.current_out: int | None = None
        self.policies = 0
        self.broken = False
        self.rekey_needed = False
        self.closed_sockets = 0
        self._next_spi = 0x1000
        # What EspTunnel tracks (its own sets, not the kernel's): spi -> larval.
        self._tracked: dict[int, bool] = {}

    def _write(self, what: str) -> None:
        if self.broken:
            raise XfrmKernelError(f"xfrm: {what} failed: ENOBUFS", operation=what, errno=105)

    async def prepare(self) -> list[str]:
        self._write("add policy")
        fixed = [] if self.policies in (0, 3) else ["policy restored"]
        self.policies = 3
        return fixed

    async def allocate_spi(self) -> int:
        self._write("allocate SPI")
        self._next_spi += 1
        self.inbound[self._next_spi] = None
        self._tracked[self._next_spi] = True
        return self._next_spi

    async def install_inbound(self, spi: int, key: Secret) -> None:
        self._write("install SA")
        assert len(key) == 36
        self.inbound[spi] = key
        self._tracked[spi] = False

    async def activate_outbound(self, spi: int, key: Secret) -> None:
        self._write("install SA")
        assert len(key) == 36
        self.outbound = {spi: key}
        self.current_out = spi

    async def retire_inbound(self, spi: int) -> bool:
        self._write("delete SA")
        self._tracked.pop(spi, None)
        return self.inbound.pop(spi, "gone") != "gone"

    async def fail_closed(self, reason: str, *, ensure_policies: bool = True) -> int:
        self._write("delete SA")
        if ensure_policies:
            self.policies = 3
        n = len(self.inbound) + len(self.outbound)
        self.inbound, self.outbound, self.current_out = {}, {}, None
        self._tracked.clear()
        return n

    async def reconcile(self) -> list[str]:
        return await self.prepare()

    async def held_keys(self, spi_in: int, spi_out: int) -> tuple[Secret | None, Secret | None]:
        return self.inbound.get(spi_in), self.outbound.get(spi_out)

    async def status(self) -> EspTunnelStatus:
        def sa(spi: int, d: Literal["in", "out"], larval: bool) -> SaStatus:
            return SaStatus(spi, d, larval, 0, 0, 0, Lifetime(), 128, True, 0, 0)

        return EspTunnelStatus(
            "t1", self.reqid, "policy", self.policies,
            tuple(sa(s, "in", k is None) for s, k in self.inbound.items()),
            tuple(sa(s, "out", False) for s in self.outbound), self.current_out, False, False)

    async def teardown(self) -> None:
        self.inbound, self.outbound, self.current_out, self.policies = {}, {}, None, 0

    def owns(self, event: SaExpired | SaAcquire) -> bool:
        return event.reqid == self.reqid

    def classify(self, event: SaExpired) -> Literal["inbound", "outbound", "larval", "other"]:
        if not self.owns(event):
            return "other"
        if event.dst == LOCAL and event.spi in self._tracked:
            return "larval" if self._tracked[event.spi] else "inbound"
        if event.dst == REMOTE and event.spi == self.current_out:
            return "outbound"
        return "other"

    def close(self) -> None:
        self.closed_sockets += 1

    # -- what the kernel would do on its own ----------------------------------------------------
    def expired(self, spi: int, *, inbound: bool, hard: bool) -> SaExpired:
        """The EXPIRE notification for one of our SAs (hard: the kernel deleted it)."""
        if hard and inbound:
            self.inbound.pop(spi, None)
        elif hard:
            self.outbound.pop(spi, None)
        src, dst = (REMOTE, LOCAL) if inbound else (LOCAL, REMOTE)
        return SaExpired(src, dst, spi, self.reqid, hard, 0, 0)
