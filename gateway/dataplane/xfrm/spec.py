"""What the daemon asks for: one ESP tunnel (``EspTunnelSpec``), validated into ``Resolved``.

The data plane knows nothing of the config models or the peer protocol: the daemon fills this
frozen dataclass. ``resolve()`` reports every problem at once (XfrmSpecError) before anything
touches the kernel.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Literal

from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.errors import XfrmSpecError
from gateway.dataplane.xfrm.model import Address, Lifetime, Mark, Network

__all__ = ["EspTunnelSpec", "Resolved", "TunnelMode", "assign_reqids", "reqid_for", "resolve"]

TunnelMode = Literal["policy", "route"]
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ 16 including the NUL
_U32 = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class EspTunnelSpec:
    """One ESP tunnel to a peer gateway.

    ``local``/``remote``: the outer (public) addresses. ``local_subnets``/``remote_subnets``:
    the protected networks behind each gateway (CIDRs, IPv4 and/or IPv6). ``reqid``: marks every
    SA and policy of this tunnel as ours (in [REQID_MIN, REQID_MAX]; see reqid_for()).

    ``mode="policy"``: out/in/fwd policies for every local x remote subnet pair of one family.
    ``mode="route"``: an XFRM interface ``ifname`` with ``if_id``; family-wide policies carry the
    if_id, so exactly what is routed into the interface is encrypted; routes for the remote
    subnets point at the interface. ``mark``: optional fwmark restricting policies and SAs.
    ``replay_window`` in packets (0 disables anti-replay, only without ESN), ``esn``: 64-bit
    sequence numbers. ``lifetime``: per-SA soft (rekey) and hard (delete) limits.
    """

    name: str
    local: str
    remote: str
    local_subnets: tuple[str, ...]
    remote_subnets: tuple[str, ...]
    reqid: int
    mode: TunnelMode = "policy"
    if_id: int | None = None
    ifname: str | None = None
    mark: Mark | None = None
    replay_window: int = c.DEFAULT_REPLAY_WINDOW
    esn: bool = True
    lifetime: Lifetime = field(default_factory=Lifetime)
    priority: int = c.DEFAULT_POLICY_PRIORITY


@dataclass(frozen=True, slots=True)
class Resolved:
    """A validated spec with parsed addresses."""

    spec: EspTunnelSpec
    local: Address
    remote: Address
    local_nets: tuple[Network, ...]
    remote_nets: tuple[Network, ...]

    @property
    def if_id(self) -> int | None:
        return self.spec.if_id if self.spec.mode == "route" else None


def reqid_for(name: str) -> int:
    """A stable reqid in our range for a tunnel name (the same after every restart, so leftovers
    of a crashed run are recognised). Use assign_reqids() for a whole config: it resolves the
    rare collision of two names deterministically."""
    digest = hashlib.blake2s(name.encode(), digest_size=2).digest()
    return c.REQID_MIN + int.from_bytes(digest, "big") % (c.REQID_MAX - c.REQID_MIN + 1)


def assign_reqids(names: Iterable[str]) -> dict[str, int]:
    """reqid_for() for every name; on a collision, the name later in sorted order takes the next
    free value."""
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for name in sorted(set(names)):
        reqid = reqid_for(name)
        while reqid in taken:
            reqid = c.REQID_MIN if reqid == c.REQID_MAX else reqid + 1
        taken[reqid] = name
        out[name] = reqid
    return out


def _net(text: str, what: str, problems: list[str]) -> Network | None:
    try:
        return ip_network(text, strict=True)
    except ValueError as exc:
        problems.append(f"{what} {text!r} is not a network in CIDR form ({exc})")
        return None


def _addr(text: str, what: str, problems: list[str]) -> Address | None:
    try:
        addr = ip_address(text)
    except ValueError:
        problems.append(f"{what} {text!r} is not an IP address")
        return None
    if addr.is_unspecified or addr.is_multicast:
        problems.append(f"{what} {text!r} must be a unicast address of a gateway")
        return None
    return addr


def _check_lifetime(lft: Lifetime, problems: list[str]) -> None:
    for kind in ("seconds", "bytes", "packets"):
        soft, hard = getattr(lft, f"soft_{kind}"), getattr(lft, f"hard_{kind}")
        for label, value in (("soft", soft), ("hard", hard)):
            if value is not None and value <= 0:
                problems.append(f"lifetime {label}_{kind} must be positive or None, got {value}")
        if soft is not None and hard is not None and soft >= hard:
            problems.append(f"lifetime soft_{kind} ({soft}) must be below hard_{kind} ({hard}): "
                            "the soft limit triggers the rekey, the hard one deletes the SA")


def resolve(spec: EspTunnelSpec) -> Resolved:
    """Validate ``spec``; XfrmSpecError lists every problem found."""
    p: list[str] = []
    if not spec.name or len(spec.name) > 64 or not spec.name.isprintable():
        p.append(f"name {spec.name!r} must be 1-64 printable characters")
    local = _addr(spec.local, "local address", p)
    remote = _addr(spec.remote, "remote address", p)
    if local is not None and remote is not None and local.version != remote.version:
        p.append(f"local {local} and remote {remote} must be of one address family")
    lnets = [n for t in spec.local_subnets if (n := _net(t, "local subnet", p)) is not None]
    rnets = [n for t in spec.remote_subnets if (n := _net(t, "remote subnet", p)) is not None]
    if not spec.local_subnets or not spec.remote_subnets:
        p.append("at least one local and one remote subnet are needed")
    if spec.mode == "policy":
        for net in lnets:
            if not any(r.version == net.version for r in rnets):
                p.append(f"local subnet {net} has no remote subnet of its family to pair with")
        for net in rnets:
            if not any(n.version == net.version for n in lnets):
                p.append(f"remote subnet {net} has no local subnet of its family to pair with")
    elif spec.mode == "route":
        if spec.if_id is None or not 0 < spec.if_id <= _U32:
            p.append("route mode needs if_id, a number in 1..4294967295")
        if spec.ifname is None or not _IFNAME_RE.match(spec.ifname):
            p.append(f"route mode needs ifname, 1-15 of [A-Za-z0-9_.-], got {spec.ifname!r}")
    else:
        p.append(f"mode {spec.mode!r} must be 'policy' or 'route'")
    if remote is not None:
        for net in rnets:
            if net.version == remote.version and remote in net:
                p.append(f"remote subnet {net} contains the remote gateway {remote}: the "
                         "gateways' own traffic (the key exchange) would need the tunnel it "
                         "sets up; list the protected networks without the gateway address")
    if not c.REQID_MIN <= spec.reqid <= c.REQID_MAX:
        p.append(f"reqid {spec.reqid} is outside this gateway's range "
                 f"{c.REQID_MIN:#x}-{c.REQID_MAX:#x} (use reqid_for(name))")
    if spec.mark is not None and (not 0 <= spec.mark.value <= _U32
                                  or not 0 < spec.mark.mask <= _U32):
        p.append("mark value must be 0..2^32-1 and mask 1..2^32-1")
    if not 0 <= spec.replay_window <= c.MAX_REPLAY_WINDOW:
        p.append(f"replay_window must be 0..{c.MAX_REPLAY_WINDOW} packets")
    if spec.esn and spec.replay_window == 0:
        p.append("esn needs a replay window (the kernel keeps the high sequence bits there)")
    if not 0 <= spec.priority <= _U32:
        p.append("priority must be 0..2^32-1")
    _check_lifetime(spec.lifetime, p)
    if p:
        raise XfrmSpecError(f"xfrm tunnel {spec.name!r}: " + "; ".join(p))
    assert local is not None and remote is not None
    return Resolved(spec, local, remote, tuple(lnets), tuple(rnets))
