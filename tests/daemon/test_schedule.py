import random

import pytest

from gateway.daemon.schedule import JITTER_FRACTION, plan_rotation

pytestmark = pytest.mark.unit


def test_normal_interval_is_jittered_downwards_only() -> None:
    rng = random.Random(1)
    delays = [plan_rotation(120, 180, 1000, 64, rng).delay for _ in range(500)]
    assert min(delays) >= 120 * (1 - JITTER_FRACTION)
    assert max(delays) <= 120
    assert max(delays) - min(delays) > 5  # jitter really spreads the rotations


def test_unknown_stock_uses_normal_interval() -> None:
    plan = plan_rotation(120, 180, None, 64, random.Random(2))
    assert not plan.low_stock
    assert plan.delay <= 120


def test_low_stock_stretches_in_inverse_proportion() -> None:
    rng = random.Random(3)
    plan = plan_rotation(10, 1000, 32, 64, rng)
    assert plan.low_stock
    assert 20 * (1 - JITTER_FRACTION) <= plan.delay <= 20


def test_stretch_never_reaches_reject_after() -> None:
    for stock in (0, 1, 5, 63):
        plan = plan_rotation(120, 180, stock, 64, random.Random(stock))
        assert plan.low_stock
        assert plan.delay <= 165  # 180 - (180 - 120) * 0.25: time left for a retry


def test_back_to_normal_at_low_water() -> None:
    assert not plan_rotation(120, 180, 64, 64).low_stock


def test_rejects_inconsistent_timers() -> None:
    with pytest.raises(ValueError):
        plan_rotation(180, 120, None, 64)
