"""Pure drift planning and spec validation (no I/O)."""

from __future__ import annotations

import base64
import os

import pytest

from gateway.dataplane import SpecError, WgInterfaceSpec, WgPeerSpec
from gateway.dataplane.reconcile import normalize_spec, plan_addresses, plan_device
from gateway.dataplane.types import DeviceState, PeerState, PeerStatus
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit


def pub() -> str:
    return base64.b64encode(os.urandom(32)).decode()


P1, P2, P3 = pub(), pub(), pub()
KEY = Secret(os.urandom(32))


def spec(**kw: object) -> WgInterfaceSpec:
    base: dict[str, object] = dict(
        name="wg0", private_key=KEY, listen_port=51820, addresses=("10.0.0.1/24",),
        peers=(WgPeerSpec(P1, "192.0.2.1:51820", ("10.0.0.2/32", "10.9.0.0/16"), 25),),
    )
    base.update(kw)
    return normalize_spec(WgInterfaceSpec(**base))  # type: ignore[arg-type]


def peer_state(public: str, **kw: object) -> PeerState:
    base: dict[str, object] = dict(
        public_key=public, preshared_key=None, endpoint="192.0.2.1:51820",
        allowed_ips=frozenset({"10.0.0.2/32", "10.9.0.0/16"}), persistent_keepalive=25,
        status=PeerStatus(public, None, 0, 0, None),
    )
    base.update(kw)
    return PeerState(**base)  # type: ignore[arg-type]


def state(**kw: object) -> DeviceState:
    base: dict[str, object] = dict(private_key=KEY, listen_port=51820, peers={P1: peer_state(P1)})
    base.update(kw)
    return DeviceState(**base)  # type: ignore[arg-type]


def test_matching_state_plans_nothing() -> None:
    plan = plan_device(spec(), state())
    assert plan.empty and plan.corrections == ()


def test_new_device_gets_everything_but_no_psk() -> None:
    plan = plan_device(spec(), None)
    assert plan.private_key == KEY and plan.listen_port == 51820
    assert [c.create for c in plan.peer_changes] == [True]
    assert plan.corrections == ()


def test_each_kind_of_drift_is_planned_and_described() -> None:
    drifted = state(
        private_key=Secret(os.urandom(32)),
        listen_port=40000,
        peers={
            P1: peer_state(P1, endpoint="192.0.2.9:1", allowed_ips=frozenset({"10.0.0.3/32"}),
                           persistent_keepalive=None),
            P3: peer_state(P3),
        },
    )
    plan = plan_device(spec(peers=(*spec().peers, WgPeerSpec(P2, None, ("10.0.0.4/32",)))),
                       drifted)
    assert plan.private_key == KEY and plan.listen_port == 51820
    assert plan.remove_peers == (P3,)
    changes = {c.spec.public_key: c for c in plan.peer_changes}
    assert changes[P2].create
    assert (changes[P1].endpoint, changes[P1].allowed_ips, changes[P1].keepalive) == (
        True, True, True)
    text = "\n".join(plan.corrections)
    assert "private key differed" in text and KEY.reveal().hex() not in text
    assert "listen_port 40000 -> 51820" in text
    assert f"removed unexpected peer {P3}" in text
    assert f"peer {P2} was missing" in text
    assert "endpoint 192.0.2.9:1 -> 192.0.2.1:51820" in text
    assert "persistent_keepalive 0 -> 25" in text


def test_unset_fields_are_not_reconciled() -> None:
    loose = spec(listen_port=None, peers=(WgPeerSpec(P1, None, ("10.9.0.0/16", "10.0.0.2/32"),
                                                     25),))
    roamed = state(listen_port=33333, peers={P1: peer_state(P1, endpoint="198.51.100.7:999")})
    assert plan_device(loose, roamed).empty


def test_adopt_plans_nothing() -> None:
    adopted = spec(private_key=None, adopt=True)
    assert plan_device(adopted, state(listen_port=1, peers={})).empty


def test_psk_differences_are_not_drift() -> None:
    with_psk = state(peers={P1: peer_state(P1, preshared_key=Secret(os.urandom(32)))})
    assert plan_device(spec(), with_psk).empty


def test_normalisation() -> None:
    s = spec(addresses=("10.0.0.1/24", "fd00::1/64", "10.0.0.1/24"),
             peers=(WgPeerSpec(P1, "[fd00::2]:51820", ("10.0.0.5/24", "fd00::2/128"), 0),))
    assert s.addresses == ("10.0.0.1/24", "fd00::1/64")
    (p,) = s.peers
    assert p.allowed_ips == ("10.0.0.0/24", "fd00::2/128")
    assert p.endpoint == "[fd00::2]:51820" and p.persistent_keepalive is None
    assert plan_addresses("wg0", s.addresses, {"10.0.0.1/24", "10.5.0.1/16"}) == (
        ["fd00::1/64"], ["10.5.0.1/16"],
        ["wg0: address fd00::1/64 was missing; added", "wg0: unexpected address 10.5.0.1/16; removed"],
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(name="this-name-is-too-long"), "interface name"),
        (dict(private_key=None), "private_key is required"),
        (dict(private_key=Secret(b"short")), "32 bytes"),
        (dict(listen_port=70000), "listen_port"),
        (dict(addresses=("10.0.0.300/24",)), "is not IP/prefix"),
        (dict(peers=(WgPeerSpec("abc"),)), "not base64"),
        (dict(peers=(WgPeerSpec(base64.b64encode(b"x" * 31).decode()),)), "31 bytes"),
        (dict(peers=(WgPeerSpec(P1), WgPeerSpec(P1))), "listed twice"),
        (dict(peers=(WgPeerSpec(P1, "vpn.example.net:51820"),)), "resolve host names"),
        (dict(peers=(WgPeerSpec(P1, "192.0.2.1"),)), "IP:port"),
        (dict(peers=(WgPeerSpec(P1, "192.0.2.1:0"),)), "port must be"),
        (dict(peers=(WgPeerSpec(P1, None, ("10.0.0.0/33",)),)), "is not a CIDR"),
        (dict(peers=(WgPeerSpec(P1, None, (), 70000),)), "persistent_keepalive"),
    ],
)
def test_bad_specs_are_refused_before_any_io(kw: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        spec(**kw)
    assert KEY.reveal().hex() not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_normalize_spec_remembers_the_spec_it_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reconciliation pass re-applies the same spec object every 30 s: its peers are parsed
    # once, and a spec already canonical is its own canonical form (no copy kept).
    from gateway.dataplane import reconcile

    raw = WgInterfaceSpec("wg7", KEY, 51820, ("10.0.0.1/24",),
                          (WgPeerSpec(P1, "192.0.2.1:51820", ("10.9.1.2/16",), 0),))
    first = normalize_spec(raw)
    assert first.peers[0].allowed_ips == ("10.9.0.0/16",) and first.peers[0].persistent_keepalive \
        is None
    calls: list[str] = []
    monkeypatch.setattr(reconcile, "normalize_cidr", lambda c: calls.append(c) or c)
    assert normalize_spec(raw) is first and normalize_spec(first) is first and calls == []
    canonical = WgInterfaceSpec("wg8", KEY, 51820, ("10.0.0.1/24",),
                                (WgPeerSpec(P2, None, ("10.8.0.0/16",), None),))
    assert normalize_spec(canonical) is canonical and calls == ["10.8.0.0/16"]
    # An invalid spec is refused every time (errors are not remembered as results).
    bad = WgInterfaceSpec("wg9", KEY, 51820, (), (WgPeerSpec(P3, None, ("nope",), None),))
    monkeypatch.undo()
    for _ in range(2):
        with pytest.raises(SpecError):
            normalize_spec(bad)
