"""Keys installed vs keys in use: attributing observed WireGuard handshakes to PSKs."""

import pytest

from gateway.daemon.inuse import HandshakeTracker

pytestmark = pytest.mark.unit


def test_handshakes_are_attributed_to_the_psk_installed_before_them() -> None:
    t = HandshakeTracker()
    t.observe(None)  # no handshake yet
    assert t.handshakes == 0
    t.activated(1, 100.0)
    t.activated(2, 105.0)
    t.observe(107.0)  # under epoch 2's PSK: fresh
    t.observe(107.0)  # the same handshake seen again: not counted twice
    t.activated(3, 110.0)
    t.observe(112.0)  # epoch 3: fresh
    t.observe(113.0)  # another handshake, still epoch 3: not fresh
    assert (t.handshakes, t.fresh, t.in_use_epoch) == (3, 2, 3)
    st = t.status(120.0)
    assert st["psk_in_use_epoch"] == 3 and st["psk_in_use_age_s"] == 10.0
    assert st["fresh_handshakes"] == 2 and st["last_handshake_age_s"] == 7.0


def test_a_handshake_before_any_known_psk_is_attributed_to_none() -> None:
    t = HandshakeTracker()
    t.activated(4, 200.0)
    t.observe(150.0)
    assert t.handshakes == 1 and t.fresh == 0 and t.in_use_epoch is None


def test_only_the_activations_a_later_handshake_can_use_are_kept() -> None:
    """A tracker holds the PSK in use and those installed after it, not its whole history."""
    t = HandshakeTracker()
    for epoch in range(1, 51):
        t.activated(epoch, 100.0 * epoch)
    t.observe(4_000.0, now_wall=4_001.0)  # under epoch 40's PSK
    assert (t.fresh, t.in_use_epoch) == (1, 40)
    assert list(t._epochs) == list(range(40, 51))
    t.observe(4_050.0, now_wall=4_051.0)  # still epoch 40: not fresh
    t.observe(4_950.0, now_wall=4_951.0)  # epoch 49: fresh
    assert (t.handshakes, t.fresh, t.in_use_epoch) == (3, 2, 49)
    assert list(t._epochs) == [49, 50] and list(t._used) == [49]


def test_a_look_without_a_handshake_forgets_what_no_later_one_can_use() -> None:
    """No traffic, no handshake: looks still bound the history; a handshake after the look is
    attributed as before."""
    t = HandshakeTracker()
    for epoch in range(1, 41):
        t.activated(epoch, 100.0 * epoch)
    t.observe(None, now_wall=3_050.0)  # the last PSK installed before the look: epoch 30
    assert list(t._epochs) == list(range(30, 41))
    t.observe(None, now_wall=3_002.0)  # 5 s of slack: epoch 29 may still be used
    assert list(t._epochs) == list(range(30, 41))
    t.observe(3_900.0, now_wall=3_901.0)
    assert (t.handshakes, t.fresh, t.in_use_epoch) == (1, 1, 39)
    assert list(t._epochs) == [39, 40]
