"""The link pool and key network model on a fake clock (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.kms.sim.errors import BadRequest, PoolExhausted, Unauthorized, Unavailable
from gateway.kms.sim.model import KeyNetwork, KmeLimits
from gateway.kms.sim.pool import LinkPool


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.unit
def test_pool_starts_full_and_refills_fractionally() -> None:
    clock = FakeClock()
    pool = LinkPool("B", "A", max_key_count=4, key_size=256, key_rate=100.0, clock=clock)
    assert pool.name == ("A", "B") and pool.stock_keys == 4
    assert len(pool.draw(1024)) == 128 and pool.stock_bits == 0
    clock.now += 2.0  # 200 bits: not yet one key
    assert (pool.stock_bits, pool.stock_keys) == (200, 0)
    clock.now += 0.6  # fractions add up: 260 bits
    assert (pool.stock_bits, pool.stock_keys) == (260, 1)
    clock.now += 1000.0
    assert pool.stock_bits == 1024  # capped at capacity


@pytest.mark.unit
def test_pool_exhaustion_takes_nothing() -> None:
    pool = LinkPool("A", "B", max_key_count=1, key_size=256, key_rate=0.0, clock=FakeClock())
    with pytest.raises(PoolExhausted) as info:
        pool.draw(512)
    assert (info.value.wanted_bits, info.value.stock_bits) == (512, 256)
    assert str(info.value) == "QKD link A-B holds 256 bits, 512 needed"
    assert pool.stock_bits == 256


@pytest.mark.unit
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"key_size": 100}, "key_size must be a positive multiple of 8 bits, got 100"),
    ({"key_rate": -1.0}, "key_rate must be a finite number >= 0 bits/s, got -1.0"),
    ({"max_key_count": -1}, "max_key_count must be >= 0, got -1"),
])
def test_pool_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    args: dict[str, float] = {"max_key_count": 1, "key_size": 256, "key_rate": 0.0} | kwargs
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(") + "$"):
        LinkPool("A", "B", **args)  # type: ignore[arg-type]


@pytest.mark.fuzz
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(1, 64)), max_size=40))
def test_pool_never_overdraws_nor_overfills(steps: list[tuple[float, int]]) -> None:
    clock = FakeClock()
    pool = LinkPool("A", "B", max_key_count=8, key_size=64, key_rate=48.0, clock=clock)
    elapsed, drawn = 0.0, 0
    for dt, nbytes in steps:
        clock.now += dt
        elapsed += dt
        try:
            pool.draw(nbytes * 8)
            drawn += nbytes * 8
        except PoolExhausted:
            pass
        assert 0 <= pool.stock_bits <= pool.capacity_bits
        assert drawn <= pool.capacity_bits + 48.0 * elapsed + 1e-6


def _chain(limits: KmeLimits | None = None) -> KeyNetwork:
    return KeyNetwork(["A", "R", "S", "B"], [("A", "R"), ("R", "B"), ("A", "S"), ("S", "B")],
                      {"sa": "A", "sb": "B", "sc": "B"}, limits or KmeLimits(max_key_count=10),
                      clock=FakeClock())


@pytest.mark.unit
def test_route_is_shortest_and_deterministic_and_avoids_down_nodes() -> None:
    net = _chain()
    assert net.route("A", "B") == ["A", "R", "B"]  # R sorts before S
    net.up.discard("R")
    assert net.route("A", "B") == ["A", "S", "B"]
    net.up.discard("S")
    with pytest.raises(Unavailable):
        net.route("A", "B")


@pytest.mark.unit
def test_relay_draws_every_hop_and_parks_at_the_slave_kme() -> None:
    net = _chain()
    keys = net.issue("A", "sa", "sb", number=3, size=256)
    assert [k.path for k in keys] == [("A", "R", "B")] * 3
    assert net.link_stock("A", "R") == net.link_stock("R", "B") == 7
    assert net.link_stock("A", "S") == 10
    assert net.relayed_bits == 3 * 256
    with pytest.raises(Unauthorized):
        net.collect("B", "sc", "sa", [keys[0].key_id])
    got = net.collect("B", "sb", "sa", [k.key_id.upper() for k in keys])
    assert [g.key for g in got] == [k.key for k in keys]
    with pytest.raises(BadRequest):
        net.collect("B", "sb", "sa", [keys[0].key_id])


@pytest.mark.unit
def test_limits_validation() -> None:
    with pytest.raises(ValueError, match="key_size 32 must lie in"):
        KmeLimits(key_size=32)
    with pytest.raises(ValueError, match="unknown KME 'Z'"):
        KeyNetwork(["A"], [("A", "Z")], {}, KmeLimits())
    with pytest.raises(ValueError, match="attached to unknown KME"):
        KeyNetwork(["A"], [], {"s": "Q"}, KmeLimits())
