"""Hypothesis profiles of the fuzz tier, applied per test with ``@FUZZ`` (a settings
decorator), so that loading this folder changes no other folder's hypothesis settings.

``ci`` (default): bounded (200 inputs per test, a few seconds per parser), part of `make test`.
``long``: what `make fuzz` runs (tests/fuzz/run_long.py); select it with QKD_FUZZ_PROFILE=long,
size it with QKD_FUZZ_EXAMPLES (default 20000).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["FUZZ", "PROFILE"]

settings.register_profile(
    "qkd-fuzz-ci", max_examples=200, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "qkd-fuzz-long", max_examples=int(os.environ.get("QKD_FUZZ_EXAMPLES", "20000")),
    deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get("QKD_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"QKD_FUZZ_PROFILE={PROFILE!r}: use ci or long")
FUZZ = settings.get_profile(f"qkd-fuzz-{PROFILE}")
