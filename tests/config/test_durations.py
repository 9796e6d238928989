from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import format_duration, parse_duration


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("120s", 120.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), ("250ms", 0.25),
     ("1m30s", 90.0), ("1.5s", 1.5), (" 2m ", 120.0), (120, 120.0), (0.5, 0.5), ("0s", 0.0)],
)
def test_parse(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.unit
@pytest.mark.parametrize("bad", ["5x", "", "s", "-1s", "1", "5 minutes", -3, True, None, [1]])
def test_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("seconds", "text"),
    [(120.0, "2m"), (90.0, "1m30s"), (0.25, "250ms"), (0.0, "0s"), (86400.0, "1d"),
     (3725.0, "1h2m5s")],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.fuzz
@given(st.integers(min_value=0, max_value=10**7) | st.integers(0, 10**6).map(lambda n: n / 1000))
def test_format_parse_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
