import random

import pytest

from gateway.daemon.schedule import (
    COALESCE_GRID,
    FIRST_ROTATION_SPREAD,
    JITTER_FRACTION,
    brought_forward,
    coalesce,
    plan_rotation,
)

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


def test_wireguard_rotation_is_brought_forward_to_just_before_the_next_handshake() -> None:
    from gateway.daemon.schedule import WG_FRESH_MARGIN, WG_REKEY_AFTER_TIME, align_to_handshake

    # Rotated 40 s after a handshake: the next one is due in 80 s, so rotate in 65 s.
    assert align_to_handshake(118.0, 1000.0, 1040.0) == pytest.approx(
        WG_REKEY_AFTER_TIME - WG_FRESH_MARGIN - 40)
    # Never later than the configured (jittered) interval ...
    assert align_to_handshake(30.0, 1000.0, 1040.0) == 30.0
    # ... and when the handshake is imminent, the key just installed is the one it takes.
    assert align_to_handshake(118.0, 1000.0, 1110.0) == 118.0
    assert align_to_handshake(118.0, None, 1110.0) == 118.0


def test_plan_names_the_window_the_rotation_may_move_in() -> None:
    plan = plan_rotation(120, 180, None, 64, random.Random(4))
    assert (plan.earliest, plan.latest) == (120 * (1 - JITTER_FRACTION), 120)
    assert plan.earliest <= plan.delay <= plan.latest
    backup = plan_rotation(120, 180, None, 64, jitter=False)
    assert backup.earliest == backup.delay == backup.latest == 120


def test_coalesced_rotations_fall_on_the_grid_inside_their_window() -> None:
    rng = random.Random(5)
    points = set()
    for _ in range(2000):
        start = rng.uniform(0, 10_000)
        plan = plan_rotation(120, 180, None, 64, rng)
        delay = coalesce(start, plan.delay, plan.earliest, plan.latest)
        assert plan.earliest - 1e-9 <= delay <= plan.latest + 1e-9
        assert delay <= plan.delay or delay - plan.delay < COALESCE_GRID
        at = start + delay
        assert abs(at - round(at / COALESCE_GRID) * COALESCE_GRID) < 1e-6
        points.add(round(delay - plan.earliest))
    # The jitter still spreads rotations over the whole window, now in grid steps.
    assert len(points) >= 12


def test_a_window_without_a_grid_point_leaves_the_delay() -> None:
    assert coalesce(100.2, 0.5, 0.4, 0.6) == 0.5  # 100.6-100.8: no whole second
    assert coalesce(100.2, 0.5, 0.5, 0.5) == 0.5  # an unjittered (backup) side never moves
    assert coalesce(100.2, 1.0, 0.5, 1.0) == pytest.approx(0.8)  # 101.0 lies inside
    assert coalesce(100.2, 0.7, 0.7, 1.0) == pytest.approx(0.8)  # later, within the window
    with pytest.raises(ValueError):
        coalesce(0.0, 2.0, 0.5, 1.0)


def test_the_first_rotation_after_a_start_spreads_over_half_the_interval() -> None:
    rng = random.Random(6)
    firsts = [plan_rotation(120, 180, None, 64, rng, first=True) for _ in range(500)]
    assert all(p.earliest == 120 * (1 - FIRST_ROTATION_SPREAD) <= p.delay <= 120 for p in firsts)
    assert min(p.delay for p in firsts) < 70  # the start's wave really spreads
    # A low stock stretches instead (keys are short); a backup side never moves.
    low = plan_rotation(120, 180, 10, 64, rng, first=True)
    assert low.low_stock and low.earliest >= 165 * (1 - JITTER_FRACTION)
    assert plan_rotation(120, 180, None, 64, rng, jitter=False, first=True).delay == 120


def test_a_rotation_brought_forward_to_the_handshake_keeps_a_window_only_when_jittered() -> None:
    plan = plan_rotation(120, 180, None, 64, random.Random(7))
    moved = brought_forward(plan, 65.0)
    assert (moved.earliest, moved.delay, moved.latest) == (65.0 - COALESCE_GRID, 65.0, 65.0)
    assert brought_forward(plan, plan.delay) is plan  # not brought forward: the plan stands
    backup = brought_forward(plan_rotation(120, 180, None, 64, jitter=False), 65.0)
    assert backup.earliest == backup.delay == backup.latest == 65.0
    assert brought_forward(plan, 1.5).earliest == 1.0  # never sooner than a second
