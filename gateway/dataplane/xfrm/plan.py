"""Pure planning for one tunnel: the policies it needs, which kernel objects are its own, what
to change to get from the kernel's state to the wanted one, and SA read-back checks.

Ownership rule (the only one): an SA is ours when its reqid is the tunnel's reqid; a policy is
ours when it has templates and all of them carry the tunnel's reqid. Anything else, including a
policy with the same selector under another reqid, belongs to someone else and is never changed.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.model import (
    PolicyParams,
    PolicyState,
    SaParams,
    SaState,
    Selector,
    Template,
    family_of,
    spi_hex,
)
from gateway.dataplane.xfrm.spec import Resolved
from gateway.keymaterial import Secret

__all__ = [
    "PolicyPlan",
    "desired_policies",
    "owns_policy",
    "owns_sa",
    "plan_policies",
    "policy_owned_by",
    "readback_problems",
    "sa_params",
]


def desired_policies(r: Resolved) -> list[PolicyParams]:
    """out/in/fwd policies: per subnet pair (policy mode) or per inner family with the if_id
    (route mode). "in" and "fwd" both require ESP: fwd covers traffic the gateway routes on to
    hosts behind it, in covers traffic to the gateway itself."""
    spec = r.spec
    out_t = (Template(src=r.local, dst=r.remote, reqid=spec.reqid),)
    in_t = (Template(src=r.remote, dst=r.local, reqid=spec.reqid),)
    pairs: list[tuple[Selector, Selector]] = []
    if spec.mode == "route":
        families = sorted({family_of(n) for n in (*r.local_nets, *r.remote_nets)})
        pairs = [(Selector.any(f), Selector.any(f)) for f in families]
    else:
        pairs = [(Selector(lnet, rnet), Selector(rnet, lnet))
                 for lnet in r.local_nets for rnet in r.remote_nets
                 if lnet.version == rnet.version]
    wanted: list[PolicyParams] = []
    for out_sel, in_sel in pairs:
        for direction, sel, tmpl in ((c.Direction.OUT, out_sel, out_t),
                                     (c.Direction.IN, in_sel, in_t),
                                     (c.Direction.FWD, in_sel, in_t)):
            wanted.append(PolicyParams(sel, direction, tmpl, priority=spec.priority,
                                       mark=spec.mark, if_id=r.if_id))
    return wanted


def owns_sa(r: Resolved, sa: SaState) -> bool:
    """Ours, and a real SA (not the kernel's acquire placeholder, see SaState.placeholder)."""
    return sa.proto == c.IPPROTO_ESP and sa.reqid == r.spec.reqid and not sa.placeholder


def policy_owned_by(pol: PolicyState, reqids: Container[int]) -> bool:
    """A policy is owned by a reqid set when it has templates and all carry one of them."""
    return bool(pol.templates) and all(t.reqid in reqids for t in pol.templates)


def owns_policy(r: Resolved, pol: PolicyState) -> bool:
    return policy_owned_by(pol, (r.spec.reqid,))


@dataclass
class PolicyPlan:
    """create: missing; update: ours but different (replaced atomically); remove: ours but no
    longer wanted (after the others are in place); conflicts: the slot is someone else's."""

    create: list[PolicyParams] = field(default_factory=list)
    update: list[PolicyParams] = field(default_factory=list)
    remove: list[PolicyState] = field(default_factory=list)
    conflicts: list[tuple[PolicyParams, PolicyState]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.remove or self.conflicts)

    def corrections(self, name: str) -> list[str]:
        """What was wrong, for logs (one line each)."""
        return ([f"{name}: {p.describe()} was missing; added" for p in self.create]
                + [f"{name}: {p.describe()} differed; replaced" for p in self.update]
                + [f"{name}: {p.describe()} is not wanted any more; removed"
                   for p in self.remove])


def plan_policies(r: Resolved, existing: list[PolicyState]) -> PolicyPlan:
    by_key = {p.key: p for p in existing}
    wanted = desired_policies(r)
    wanted_keys = {p.key for p in wanted}
    plan = PolicyPlan()
    for want in wanted:
        have = by_key.get(want.key)
        if have is None:
            plan.create.append(want)
        elif not owns_policy(r, have):
            plan.conflicts.append((want, have))
        elif have.params() != want:
            plan.update.append(want)
    plan.remove = [p for p in existing if owns_policy(r, p) and p.key not in wanted_keys]
    return plan


def sa_params(r: Resolved, *, inbound: bool, spi: int, key: Secret) -> SaParams:
    """The SA of one direction: inbound is remote -> local (we receive on ``spi``)."""
    spec = r.spec
    src, dst = (r.remote, r.local) if inbound else (r.local, r.remote)
    return SaParams(src=src, dst=dst, spi=spi, reqid=spec.reqid, key=key,
                    replay_window=spec.replay_window, esn=spec.esn, lifetime=spec.lifetime,
                    mark=spec.mark, if_id=r.if_id)


def readback_problems(want: SaParams, have: SaState | None) -> list[str]:
    """Differences between the SA written and the one read back (never key bytes)."""
    if have is None:
        return [f"SA {spi_hex(want.spi)} is missing right after it was written"]
    checks = [
        ("algorithm", have.algorithm, want.algorithm),
        ("ICV bits", have.icv_bits, want.icv_bits),
        ("key length (bytes)", len(have.key) if have.key else 0, len(want.key)),
        ("reqid", have.reqid, want.reqid),
        ("mode", have.mode, c.XFRM_MODE_TUNNEL),
        ("source", have.src, want.src),
        ("destination", have.dst, want.dst),
        ("ESN", have.esn, want.esn),
        ("replay window", have.replay_window, want.replay_window),
        ("if_id", have.if_id, want.if_id),
        ("mark", have.mark, want.mark),
        ("lifetime", have.lifetime, want.lifetime),
    ]
    problems = [f"{what} is {got!r}, wanted {wanted!r}" for what, got, wanted in checks
                if got != wanted]
    if have.key is None or have.key != want.key:
        problems.append("the key differs from the one written")
    return problems
