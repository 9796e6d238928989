"""Typed XFRM requests over one socket: SAs, SPIs, policies, and a flush scoped to our reqids.

Every call is one checked netlink exchange under the socket's deadline (transport.py). Errors
are the typed errors of errors.py with the operation spelled out (SPI, addresses, reqid).
``flush_owned`` never sends XFRM_MSG_FLUSHSA / FLUSHPOLICY: those clear the whole kernel,
including a neighbouring IKE daemon's SAs; it dumps and deletes ours one by one instead.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Container
from ipaddress import ip_address
from types import TracebackType

from pyroute2.netlink import nlmsg

from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.codec import (
    allocspi_request,
    parse_policy,
    parse_sa,
    policy_id_request,
    policy_request,
    sa_id_request,
    sa_request,
)
from gateway.dataplane.xfrm.errors import (
    XfrmError,
    XfrmKernelError,
    XfrmNotFound,
    XfrmTimeout,
    kernel_error,
)
from gateway.dataplane.xfrm.model import (
    Address,
    Mark,
    PolicyParams,
    PolicyState,
    SaParams,
    SaState,
    Selector,
    spi_hex,
)
from gateway.dataplane.xfrm.plan import policy_owned_by
from gateway.dataplane.xfrm.transport import XfrmSocket, try_in_private_netns
from gateway.keymaterial import Secret

__all__ = ["XfrmClient", "esp_unavailable"]

_CHANGE = c.NLM_F_REQUEST | c.NLM_F_ACK  # what `ip xfrm` sends; the message type says the rest
_GET = c.NLM_F_REQUEST
_DUMP = c.NLM_F_REQUEST | c.NLM_F_DUMP


def _sa_name(dst: Address, spi: int, src: Address | None = None) -> str:
    return f"SA {spi_hex(spi)} {src or '*'} -> {dst}"


class XfrmClient:
    """XFRM requests in one network namespace (``netns``: a name under /var/run/netns)."""

    def __init__(self, netns: str | None = None, *, timeout: float = c.XFRM_TIMEOUT) -> None:
        self.netns = netns
        self._sock = XfrmSocket(netns, timeout=timeout)

    async def open(self) -> XfrmClient:
        await self._sock.open()
        return self

    def close(self) -> None:
        self._sock.close()

    async def __aenter__(self) -> XfrmClient:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    # -- SAs ---------------------------------------------------------------------------------
    async def add_sa(self, p: SaParams) -> None:
        """NEWSA; XfrmExists if the SPI is taken (also by a larval SA: use update_sa)."""
        await self._sock.request(f"add {_sa_name(p.dst, p.spi, p.src)} (reqid {p.reqid})",
                                 sa_request(p), c.XFRM_MSG_NEWSA, _CHANGE)

    async def update_sa(self, p: SaParams) -> None:
        """UPDSA: turns the larval SA of an allocated SPI into a full SA. On a full SA the kernel
        changes only lifetimes and selectors, never the key (read back to be sure)."""
        await self._sock.request(f"update {_sa_name(p.dst, p.spi, p.src)} (reqid {p.reqid})",
                                 sa_request(p), c.XFRM_MSG_UPDSA, _CHANGE)

    async def delete_sa(self, dst: Address, spi: int, *, src: Address | None = None,
                        mark: Mark | None = None) -> bool:
        """DELSA; False if there was no such SA."""
        try:
            await self._sock.request(f"delete {_sa_name(dst, spi, src)}",
                                     sa_id_request(dst, spi, src=src, mark=mark),
                                     c.XFRM_MSG_DELSA, _CHANGE)
        except XfrmNotFound:
            return False
        return True

    async def get_sa(self, dst: Address, spi: int, *, mark: Mark | None = None) -> SaState | None:
        """GETSA; None if there is no such SA. The answer includes the key."""
        try:
            answers = await self._sock.request(f"get {_sa_name(dst, spi)}",
                                               sa_id_request(dst, spi, mark=mark),
                                               c.XFRM_MSG_GETSA, _GET)
        except XfrmNotFound:
            return None
        return parse_sa(answers[0]) if answers else None

    async def sas(self) -> list[SaState]:
        """Every SA in the namespace (GETSA dump), ours and others'."""
        answers = await self._sock.request("dump SAs", _dump_request(),
                                           c.XFRM_MSG_GETSA, _DUMP)
        return [parse_sa(m) for m in answers]

    async def allocate_spi(self, src: Address, dst: Address, reqid: int, *,
                           mark: Mark | None = None, if_id: int | None = None,
                           low: int = c.SPI_MIN, high: int = c.SPI_MAX) -> int:
        """ALLOCSPI: the kernel picks a free SPI in [low, high] and holds it as a larval SA
        ``src`` -> ``dst`` until update_sa fills it, it is deleted, or the kernel's acquire
        timeout (net.core.xfrm_acq_expires, 30 s by default) removes it."""
        answers = await self._sock.request(
            f"allocate an SPI for {src} -> {dst} (reqid {reqid})",
            allocspi_request(src, dst, reqid, low=low, high=high, mark=mark, if_id=if_id),
            c.XFRM_MSG_ALLOCSPI, _GET)
        if not answers:
            raise XfrmKernelError(f"xfrm: ALLOCSPI for {src} -> {dst} returned no SA",
                                  operation="allocate SPI", errno=None)
        return int(answers[0]["id_spi"])

    # -- policies ------------------------------------------------------------------------------
    async def add_policy(self, p: PolicyParams) -> None:
        """NEWPOLICY; XfrmExists if a policy with the same key exists (ours or not)."""
        await self._sock.request(f"add {p.describe()}", policy_request(p),
                                 c.XFRM_MSG_NEWPOLICY, _CHANGE)

    async def update_policy(self, p: PolicyParams) -> None:
        """UPDPOLICY: replaces the policy with the same key atomically (no gap), or adds it."""
        await self._sock.request(f"update {p.describe()}", policy_request(p),
                                 c.XFRM_MSG_UPDPOLICY, _CHANGE)

    async def delete_policy(self, selector: Selector, direction: c.Direction, *,
                            mark: Mark | None = None, if_id: int | None = None) -> bool:
        """DELPOLICY; False if there was no such policy."""
        probe = PolicyParams(selector, direction, (), mark=mark, if_id=if_id)
        try:
            await self._sock.request(f"delete {probe.describe()}",
                                     policy_id_request(selector, direction, mark=mark,
                                                       if_id=if_id),
                                     c.XFRM_MSG_DELPOLICY, _CHANGE)
        except XfrmNotFound:
            return False
        return True

    async def get_policy(self, selector: Selector, direction: c.Direction, *,
                         mark: Mark | None = None, if_id: int | None = None) -> PolicyState | None:
        probe = PolicyParams(selector, direction, (), mark=mark, if_id=if_id)
        try:
            answers = await self._sock.request(
                f"get {probe.describe()}",
                policy_id_request(selector, direction, mark=mark, if_id=if_id),
                c.XFRM_MSG_GETPOLICY, _GET)
        except XfrmNotFound:
            return None
        return parse_policy(answers[0]) if answers else None

    async def policies(self) -> list[PolicyState]:
        """Every policy in the namespace (GETPOLICY dump), ours and others'."""
        answers = await self._sock.request("dump policies", _dump_request(),
                                           c.XFRM_MSG_GETPOLICY, _DUMP)
        return [parse_policy(m) for m in answers]

    # -- scoped flush --------------------------------------------------------------------------
    async def flush_owned(self, reqids: Container[int]) -> tuple[int, int]:
        """Delete every SA whose reqid is in ``reqids``, then every policy all of whose templates
        carry such a reqid; nothing else. SAs go first so that, in between, our policies drop
        traffic instead of letting it out in clear. Returns (SAs deleted, policies deleted)."""
        sas = 0
        for sa in await self.sas():
            if sa.placeholder:
                continue  # the kernel's acquire entry: not deletable, expires by itself
            if sa.proto == c.IPPROTO_ESP and sa.reqid in reqids and await self.delete_sa(
                    sa.dst, sa.spi, src=sa.src, mark=sa.mark):
                sas += 1
        policies = 0
        for pol in await self.policies():
            if policy_owned_by(pol, reqids) and await self.delete_policy(
                    pol.selector, pol.direction, mark=pol.mark, if_id=pol.if_id):
                policies += 1
        return sas, policies



def _dump_request() -> nlmsg:
    """Dump requests are a bare header (like iproute2's); the kernel needs no payload."""
    return nlmsg()


async def esp_unavailable() -> str | None:
    """None if this kernel installs a tunnel-mode ESP SA with AES-256-GCM, else the kernel's
    reason with what to do (one line, for `demo --dataplane xfrm` and the like). Probes with a
    throw-away SA in a private network namespace, so no real namespace is touched. Raises
    XfrmError if the probe cannot run (no CAP_SYS_ADMIN, no XFRM netlink at all)."""
    probe = SaParams(ip_address("192.0.2.1"), ip_address("192.0.2.2"), c.SPI_MIN, c.REQID_MIN,
                     Secret.random(c.AEAD_KEY_LEN))
    msg = sa_request(probe)
    msg["header"].update(type=c.XFRM_MSG_NEWSA, flags=_CHANGE, sequence_number=1, pid=0)
    msg.encode()
    try:
        code, detail = await try_in_private_netns(bytes(msg.data))
    except TimeoutError:
        raise XfrmTimeout("xfrm: the ESP probe got no answer in time") from None
    except OSError as exc:
        if exc.errno in (errno_mod.EPROTONOSUPPORT, errno_mod.EAFNOSUPPORT):
            return ("this kernel has no XFRM netlink (CONFIG_XFRM_USER): load xfrm_user "
                    "(`modprobe xfrm_user`), or run in the kernel lab (`make test-vm`)")
        raise XfrmError(f"xfrm: cannot probe for ESP support: {exc}") from None
    finally:
        msg.reset()
    return None if code == 0 else str(kernel_error("install an ESP SA with AES-GCM", code, detail))
