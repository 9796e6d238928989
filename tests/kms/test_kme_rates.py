"""Per-link key rates, starting stock, rate fluctuation, and SAEs in two KME networks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.kms.sim import (
    ConstantRate,
    Fluctuation,
    LinkSpec,
    PeriodicRate,
    RandomWalkRate,
    parse_fluctuation,
)
from gateway.kms.sim.errors import BadRequest, Unauthorized, Unavailable
from gateway.kms.sim.model import KeyNetwork, KmeLimits
from gateway.kms.sim.pool import LinkPool
from tests.kms.test_kme_pool import FakeClock


@pytest.mark.unit
def test_each_link_refills_at_its_own_rate_from_its_own_start() -> None:
    clock = FakeClock()
    net = KeyNetwork(["A", "R", "B"],
                     [LinkSpec("A", "R", key_rate=2560.0),           # 10 keys/s, starts full
                      LinkSpec("R", "B", key_rate=256.0, initial_keys=2),  # 1 key/s
                      ("A", "B")],                                   # network default: 0
                     {"sa": "A", "sb": "B"}, KmeLimits(max_key_count=50), clock=clock)
    assert (net.link_stock("A", "R"), net.link_stock("R", "B"), net.link_stock("A", "B")) \
        == (50, 2, 50)
    net.pools[("A", "R")].draw(50 * 256)
    net.pools[("A", "B")].draw(50 * 256)
    clock.now += 3.0
    assert (net.link_stock("A", "R"), net.link_stock("R", "B"), net.link_stock("A", "B")) \
        == (30, 5, 0)
    report = {tuple(r["link"]): r for r in net.link_report()}
    assert report[("B", "R")] == {"link": ["B", "R"], "keys": 5, "rate_bps": 256.0,
                                  "mean_rate_bps": 256.0}
    # Status reports the emptiest link of the path: the direct A-B link is empty, but the
    # shortest path is the direct link, so Status says 0 and enc_keys fails without taking.
    assert net.status("A", "sa", "sb")["stored_key_count"] == 0
    with pytest.raises(Unavailable):
        net.issue("A", "sa", "sb", 1, 256)


@pytest.mark.unit
@pytest.mark.parametrize(("spec", "message"), [
    (LinkSpec("A", "B", key_rate=-1.0), "link A:B: key_rate must be a finite number >= 0"),
    (LinkSpec("A", "B", key_rate=math.inf), "link A:B: key_rate must be a finite number >= 0"),
    (LinkSpec("A", "B", initial_keys=11), r"initial_keys must lie in \[0, max_key_count 10\]"),
])
def test_bad_link_specs_are_refused(spec: LinkSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyNetwork(["A", "B"], [spec], {}, KmeLimits(max_key_count=10))


@pytest.mark.unit
def test_a_link_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="link B:A is given twice"):
        KeyNetwork(["A", "B"], [("A", "B"), ("B", "A")], {}, KmeLimits())


@pytest.mark.unit
def test_random_walk_is_seeded_bounded_and_centred() -> None:
    a = RandomWalkRate(1000.0, spread=0.3, step_s=1.0, seed="7:A:B")
    b = RandomWalkRate(1000.0, spread=0.3, step_s=1.0, seed="7:A:B")
    c = RandomWalkRate(1000.0, spread=0.3, step_s=1.0, seed="8:A:B")
    rates_a = [a.rate_at(t) for t in range(20_000)]
    assert rates_a[:50] == [b.rate_at(t) for t in range(50)]
    assert rates_a[:50] != [c.rate_at(t) for t in range(50)]
    assert min(rates_a) >= 700.0 - 1e-9 and max(rates_a) <= 1300.0 + 1e-9
    assert max(rates_a) - min(rates_a) > 200.0  # it does move
    assert abs(sum(rates_a) / len(rates_a) - 1000.0) < 20.0  # mean-reverting: stays centred
    with pytest.raises(ValueError, match="time must not run backwards"):
        a.rate_at(10.0)


@pytest.mark.fuzz
@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 3.0), min_size=1, max_size=30), st.integers(0, 1000))
def test_pools_integrate_the_rate_whoever_looks_how_often(gaps: list[float], seed: int) -> None:
    """A link makes the same key over an interval whether its stock is read once or often."""
    fluct = Fluctuation("walk", 0.4, step_s=0.7, seed=seed)
    often_clock, once_clock = FakeClock(), FakeClock()
    often = LinkPool("A", "B", max_key_count=10_000, key_size=8, initial_keys=0, clock=often_clock,
                     key_rate=fluct.profile(800.0, ("A", "B")))
    once = LinkPool("A", "B", max_key_count=10_000, key_size=8, initial_keys=0, clock=once_clock,
                    key_rate=fluct.profile(800.0, ("A", "B")))
    for gap in gaps:
        often_clock.now += gap
        _ = often.stock_bits
    once_clock.now = often_clock.now
    assert abs(once.stock_bits - often.stock_bits) <= 1
    total = sum(gaps)
    assert 0.6 * 800 * total - 1 <= once.stock_bits <= 1.4 * 800 * total + 1


@pytest.mark.unit
def test_periodic_rate_integrates_to_its_mean_over_a_period() -> None:
    p = PeriodicRate(1000.0, depth=0.5, period_s=60.0, phase=1.0)
    assert p.bits_between(0.0, 60.0) == pytest.approx(60_000.0)
    assert p.bits_between(7.0, 127.0) == pytest.approx(120_000.0)
    samples = [p.rate_at(t / 10) for t in range(600)]
    assert min(samples) == pytest.approx(500.0, abs=1.0)
    assert max(samples) == pytest.approx(1500.0, abs=1.0)
    steps = sum(p.bits_between(t / 10, (t + 1) / 10) for t in range(100))
    assert steps == pytest.approx(p.bits_between(0.0, 10.0))
    assert ConstantRate(5.0).bits_between(1.0, 3.0) == 10.0


@pytest.mark.unit
def test_each_link_gets_its_own_walk_and_the_network_is_reproducible() -> None:
    def network(seed: int) -> KeyNetwork:
        return KeyNetwork(["A", "B", "C"], [LinkSpec("A", "B", 1000.0), LinkSpec("B", "C", 1000.0)],
                          {}, KmeLimits(), clock=FakeClock(),
                          fluctuation=Fluctuation("walk", 0.3, seed=seed))

    first, again, other = network(1), network(1), network(2)
    walk = [[p.profile.rate_at(t) for t in range(30)] for p in first.pools.values()]
    assert walk == [[p.profile.rate_at(t) for t in range(30)] for p in again.pools.values()]
    assert walk[0] != walk[1]
    assert walk != [[p.profile.rate_at(t) for t in range(30)] for p in other.pools.values()]


@pytest.mark.unit
@pytest.mark.parametrize(("text", "expected"), [
    ("none", Fluctuation(seed=4)),
    ("walk:0.3", Fluctuation("walk", 0.3, 1.0, seed=4)),
    ("walk:0.2:5", Fluctuation("walk", 0.2, 5.0, seed=4)),
    ("sine:0.5:60", Fluctuation("sine", 0.5, period_s=60.0, seed=4)),
])
def test_fluctuation_syntax(text: str, expected: Fluctuation) -> None:
    assert parse_fluctuation(text, seed=4) == expected


@pytest.mark.unit
@pytest.mark.parametrize(("text", "message"), [
    ("walk", "use none, walk:SPREAD"),
    ("walk:x", "must be numbers"),
    ("walk:1.5", r"spread must lie in \[0, 1\)"),
    ("sine:0.5", "use none, walk:SPREAD"),
    ("sine:2:60", r"depth must lie in \[0, 1\]"),
    ("sine:0.5:0", "period must be > 0 s"),
    ("gauss:1", "use none, walk:SPREAD"),
])
def test_fluctuation_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fluctuation(text)


def _two_networks() -> KeyNetwork:
    """West: A1 - W - B1; east: A2 - E1 - E2 - B2. SAE sa is attached to A1 and A2, sb to B1
    and B2: one KME in each network, like a gateway that is a client of two KMS."""
    return KeyNetwork(
        ["A1", "W", "B1", "A2", "E1", "E2", "B2"],
        [("A1", "W"), ("W", "B1"), ("A2", "E1"), ("E1", "E2"), ("E2", "B2")],
        {"sa": ["A1", "A2"], "sb": ["B1", "B2"], "sc": "B1"}, KmeLimits(max_key_count=10),
        clock=FakeClock())


@pytest.mark.unit
def test_an_sae_in_two_networks_gets_node_disjoint_paths() -> None:
    net = _two_networks()
    (west,) = net.issue("A1", "sa", "sb", 1, 256)
    (east,) = net.issue("A2", "sa", "sb", 1, 256)
    assert west.path == ("A1", "W", "B1") and east.path == ("A2", "E1", "E2", "B2")
    assert not set(west.path[1:-1]) & set(east.path[1:-1])
    assert net.status("A2", "sa", "sb")["status_extension"]["qkdgw_path"] == list(east.path)
    # Each key waits at sb's KME of its own network and only there.
    assert net.collect("B1", "sb", "sa", [west.key_id])[0].key == west.key
    with pytest.raises(BadRequest):
        net.collect("B1", "sb", "sa", [east.key_id])
    assert net.collect("B2", "sb", "sa", [east.key_id])[0].key == east.key
    assert west.key != east.key
    # An SAE attached to only one network cannot be reached from the other.
    with pytest.raises(Unavailable, match="no QKD path from A2 to B1"):
        net.issue("A2", "sa", "sc", 1, 256)
    with pytest.raises(BadRequest, match="attached to this KME"):
        net.issue("A1", "sa", "sa", 1, 256)
    assert net.attached("sa", "A2") and not net.attached("sa", "W")
    with pytest.raises(Unauthorized):
        net.collect("B2", "sc", "sa", [net.issue("A2", "sa", "sb", 1, 256)[0].key_id])
    with pytest.raises(ValueError, match="attached to no KME"):
        KeyNetwork(["A"], [], {"s": []}, KmeLimits())
