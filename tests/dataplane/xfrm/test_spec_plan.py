"""EspTunnelSpec validation, reqids, and the pure planning of policies, ownership and read-back."""

from __future__ import annotations

import dataclasses
import itertools
from ipaddress import ip_address, ip_network

import pytest

from gateway.dataplane.xfrm import (
    REQID_MAX,
    REQID_MIN,
    Direction,
    EspTunnelSpec,
    Lifetime,
    Mark,
    XfrmSpecError,
    assign_reqids,
    reqid_for,
)
from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.model import (
    PolicyParams,
    PolicyState,
    SaParams,
    SaState,
    Selector,
    Template,
)
from gateway.dataplane.xfrm.plan import (
    desired_policies,
    owns_policy,
    owns_sa,
    plan_policies,
    readback_problems,
    sa_params,
)
from gateway.dataplane.xfrm.spec import resolve
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit

R = reqid_for("site-b")


def spec(**kw: object) -> EspTunnelSpec:
    base = EspTunnelSpec("site-b", "198.51.100.1", "203.0.113.7",
                         ("10.1.0.0/24", "fd01::/64"), ("10.2.0.0/24", "10.3.0.0/16", "fd02::/64"),
                         R)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_a_valid_spec_resolves() -> None:
    r = resolve(spec())
    assert r.local == ip_address("198.51.100.1") and r.remote == ip_address("203.0.113.7")
    assert r.remote_nets[1] == ip_network("10.3.0.0/16") and r.if_id is None


def test_every_problem_is_reported_at_once() -> None:
    bad = spec(local="not-an-ip", remote="::", local_subnets=("10.1.0.1/24",),
               remote_subnets=("fd02::/64",), reqid=5, replay_window=5000,
               lifetime=Lifetime(soft_seconds=60, hard_seconds=30, soft_bytes=0),
               mark=Mark(1, 0))
    with pytest.raises(XfrmSpecError) as info:
        resolve(bad)
    text = str(info.value)
    for fragment in ("'not-an-ip' is not an IP address", "must be a unicast address",
                     "'10.1.0.1/24' is not a network", "outside this gateway's range",
                     "replay_window must be", "soft_seconds (60) must be below hard_seconds",
                     "soft_bytes must be positive", "mark value"):
        assert fragment in text, fragment
    assert isinstance(info.value, ValueError)  # SpecError is a ValueError


@pytest.mark.parametrize(("change", "fragment"), [
    ({"remote": "2001:db8::9"}, "must be of one address family"),
    ({"local_subnets": ("10.1.0.0/24",)}, "remote subnet fd02::/64 has no local subnet"),
    ({"remote_subnets": ("203.0.113.0/24", "fd02::/64")}, "contains the remote gateway"),
    ({"mode": "route"}, "route mode needs if_id"),
    ({"mode": "route", "if_id": 7, "ifname": "much-too-long-name"}, "route mode needs ifname"),
    ({"mode": "gre"}, "mode 'gre' must be"),
    ({"esn": True, "replay_window": 0}, "esn needs a replay window"),
    ({"local_subnets": ()}, "at least one local and one remote subnet"),
])
def test_specific_problems(change: dict[str, object], fragment: str) -> None:
    with pytest.raises(XfrmSpecError, match=fragment):
        resolve(spec(**change))


def test_reqids_are_stable_in_range_and_collisions_are_resolved() -> None:
    assert reqid_for("site-b") == R and REQID_MIN <= R <= REQID_MAX
    seen: dict[int, str] = {}
    pair = None
    for i in itertools.count():  # 16-bit space: a collision turns up within a few hundred
        name = f"t{i}"
        if reqid_for(name) in seen:
            pair = (seen[reqid_for(name)], name)
            break
        seen[reqid_for(name)] = name
    assigned = assign_reqids([pair[1], pair[0], "other"])
    assert len(set(assigned.values())) == 3
    assert assigned[min(pair)] == reqid_for(min(pair))
    assert all(REQID_MIN <= v <= REQID_MAX for v in assigned.values())


def test_policy_mode_pairs_subnets_of_one_family() -> None:
    r = resolve(spec())
    pols = desired_policies(r)
    assert len(pols) == 3 * 3  # (10.1 x 10.2, 10.1 x 10.3, fd01 x fd02) x (out, in, fwd)
    out = [p for p in pols if p.direction == Direction.OUT]
    assert {str(p.selector) for p in out} == {"10.1.0.0/24 -> 10.2.0.0/24",
                                             "10.1.0.0/24 -> 10.3.0.0/16",
                                             "fd01::/64 -> fd02::/64"}
    assert all(p.templates == (Template(r.local, r.remote, R),) for p in out)
    inbound = [p for p in pols if p.direction != Direction.OUT]
    assert all(p.templates == (Template(r.remote, r.local, R),) for p in inbound)
    assert all(p.if_id is None and p.priority == c.DEFAULT_POLICY_PRIORITY for p in pols)


def test_route_mode_has_family_wide_policies_with_the_if_id() -> None:
    r = resolve(spec(mode="route", if_id=9, ifname="xfrm-b", mark=Mark(3)))
    pols = desired_policies(r)
    assert len(pols) == 6
    assert {p.selector for p in pols} == {Selector.any(c.AF_INET), Selector.any(c.AF_INET6)}
    assert all(p.if_id == 9 and p.mark == Mark(3) for p in pols)


def _state(p: PolicyParams, reqid: int, priority: int | None = None) -> PolicyState:
    """``p`` as the kernel would report it, with the templates' reqid set to ``reqid``."""
    return PolicyState(p.selector, p.direction,
                       tuple(dataclasses.replace(t, reqid=reqid) for t in p.templates),
                       priority=priority or p.priority, index=1)


def test_plan_creates_updates_removes_and_never_takes_a_foreign_slot() -> None:
    r = resolve(spec())
    wanted = desired_policies(r)
    stale = PolicyState(Selector(ip_network("10.9.0.0/24"), ip_network("10.8.0.0/24")),
                        Direction.OUT, (Template(r.local, r.remote, R),), index=4)
    foreign_elsewhere = PolicyState(Selector(ip_network("10.7.0.0/24"),
                                             ip_network("10.6.0.0/24")),
                                    Direction.OUT, (Template(r.local, r.remote, 1),), index=5)
    existing = [_state(wanted[0], R), _state(wanted[1], R, priority=7), _state(wanted[2], 1),
                stale, foreign_elsewhere]
    plan = plan_policies(r, existing)
    assert plan.update == [wanted[1]]
    assert [w for w, _ in plan.conflicts] == [wanted[2]]
    assert plan.remove == [stale]
    assert plan.create == wanted[3:]
    assert owns_policy(r, existing[0]) and not owns_policy(r, foreign_elsewhere)
    lines = plan.corrections("site-b")
    assert any("differed; replaced" in line for line in lines)
    assert any("not wanted any more; removed" in line for line in lines)
    assert plan_policies(r, [_state(w, R) for w in wanted]).empty


def _readback(p: SaParams, **change: object) -> SaState:
    """``p`` as GETSA would report it, with ``change`` applied."""
    base = SaState(src=p.src, dst=p.dst, spi=p.spi, proto=50, reqid=p.reqid, mode=1,
                   flags=c.XFRM_STATE_ESN | c.XFRM_STATE_AF_UNSPEC,
                   replay_window=p.replay_window, esn=p.esn, algorithm=c.AEAD_ALGORITHM,
                   key=p.key, icv_bits=128, lifetime=p.lifetime, bytes=0, packets=0, add_time=1,
                   use_time=0, mark=None, if_id=None, selector=None, replay_errors=0,
                   integrity_failures=0)
    return dataclasses.replace(base, **change)  # type: ignore[arg-type]


def test_readback_finds_every_difference_without_showing_keys() -> None:
    r = resolve(spec(lifetime=Lifetime(soft_seconds=50, hard_seconds=60)))
    key = Secret.random(36)
    want = sa_params(r, inbound=True, spi=0x1234, key=key)
    assert (want.src, want.dst) == (r.remote, r.local)
    assert readback_problems(want, _readback(want)) == []
    assert owns_sa(r, _readback(want)) and not owns_sa(r, _readback(want, reqid=1))
    assert not owns_sa(r, _readback(want, spi=0))  # the kernel's acquire placeholder
    bad = _readback(want, key=Secret.random(36), icv_bits=64, esn=False,
                    algorithm="rfc4106(gcm(aes))x", lifetime=Lifetime())
    problems = readback_problems(want, bad)
    assert "the key differs from the one written" in problems
    assert any(p.startswith("ICV bits is 64") for p in problems)
    assert any(p.startswith("ESN is False") for p in problems)
    assert any(p.startswith("lifetime is") for p in problems)
    text = " ".join(problems)
    assert bad.key is not None
    assert key.reveal().hex() not in text and bad.key.reveal().hex() not in text
    assert readback_problems(want, None) == ["SA 0x00001234 is missing right after it was written"]
