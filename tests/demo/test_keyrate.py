"""The physical model behind the RoNaQCI spans: route lengths and secret-key rates."""

from __future__ import annotations

import pytest

from gateway.demo import fibre_km, great_circle_km, secret_key_rate_bps
from gateway.demo.ronaqci import PLACES

pytestmark = pytest.mark.unit


def test_great_circle_and_route_lengths() -> None:
    # Bucharest-Constanta is ~204 km as the crow flies (haversine on the town centres).
    assert great_circle_km(PLACES["bucharest"], PLACES["constanta"]) == pytest.approx(204, abs=2)
    assert great_circle_km(PLACES["iasi"], PLACES["iasi"]) == 0.0
    # The route factor 1.25, rounded to 5 km.
    assert fibre_km(PLACES["bucharest"], PLACES["pitesti"]) == 135.0


def test_rate_falls_tenfold_every_50_km() -> None:
    assert secret_key_rate_bps(0) == 1e6
    assert secret_key_rate_bps(50) == pytest.approx(100e3)
    assert secret_key_rate_bps(100) == pytest.approx(10e3)
    assert secret_key_rate_bps(150) == pytest.approx(1e3)
    # "A few kbit/s at 100+ km, tens of kbit/s on short spans."
    assert 1e3 < secret_key_rate_bps(120) < 5e3 and 10e3 < secret_key_rate_bps(70) < 100e3
    # A penalty in dB is the same as that much more fibre loss.
    assert secret_key_rate_bps(140, 5.0) == pytest.approx(secret_key_rate_bps(165))
    with pytest.raises(ValueError):
        secret_key_rate_bps(-1)
