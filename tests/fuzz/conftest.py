"""Hypothesis profiles for the fuzz tier.

``ci`` (default): bounded, a few seconds per parser, part of `make test`.
``long``: what `make fuzz` runs (scripts in tests/fuzz/run_long.py); select it with
``QKD_FUZZ_PROFILE=long`` (and ``QKD_FUZZ_EXAMPLES`` to change its size, default 20000).
Tests in this folder never pin ``max_examples`` themselves, so the profile decides.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=int(os.environ.get("QKD_FUZZ_EXAMPLES", "20000")), deadline=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get("QKD_FUZZ_PROFILE", "ci")
settings.register_profile("qkd_outside_fuzz", parent=settings.default)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fuzz" in str(item.fspath):
            item.add_marker(pytest.mark.fuzz)


@pytest.fixture(autouse=True)
def _fuzz_profile() -> Iterator[None]:
    # Per test, not at import: loading a profile globally would change other folders' tests.
    settings.load_profile(PROFILE)
    yield
    settings.load_profile("qkd_outside_fuzz")
