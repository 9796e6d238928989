"""Capped, jittered retries for KMS calls, and which failures are safe to retry.

Retrying is a safety question before it is a robustness one: enc_keys and status may be
repeated (a lost enc_keys answer only wastes keys on the KME), dec_keys may not (the first call
may have consumed the keys). The client decides *whether* a failure is retryable; this module
decides *when* to try again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from gateway.kms.errors import KmsConnectionError, KmsError, KmsTimeout, KmsUnavailable

__all__ = ["RETRYABLE", "RetryPolicy", "backoff_delay", "call_with_retries"]

T = TypeVar("T")

# Failures after which the KME is known not to have delivered keys to us, or where a repeat
# costs at most wasted keys. The client narrows this further for dec_keys.
RETRYABLE: tuple[type[KmsError], ...] = (KmsConnectionError, KmsTimeout, KmsUnavailable)

_log = structlog.get_logger("gateway.kms")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how fast to retry.

    ``attempts`` counts the first try (1 = never retry). Delays grow from ``base_delay`` by
    ``factor`` up to ``max_delay`` seconds; "full jitter" (a uniform draw in [0, delay]) keeps
    many gateways that lost the same KME from retrying in lock step.
    """

    attempts: int = 3
    base_delay: float = 0.05
    max_delay: float = 2.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be >= 1 (1 means no retry)")
        if self.base_delay < 0 or self.max_delay < self.base_delay or self.factor < 1:
            raise ValueError("RetryPolicy needs 0 <= base_delay <= max_delay and factor >= 1")


def backoff_delay(policy: RetryPolicy, failures: int, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``failures`` (>= 1) failures in a row: capped, jittered."""
    ceiling = min(policy.max_delay, policy.base_delay * policy.factor ** max(0, failures - 1))
    return (rng or random).uniform(0.0, ceiling)


async def call_with_retries(
    op: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: tuple[type[BaseException], ...] = RETRYABLE,
    event_context: dict[str, object] | None = None,
) -> T:
    """Run ``op`` until it succeeds, raises a non-retryable error, or attempts run out."""
    failures = 0
    while True:
        try:
            return await op()
        except retry_on as exc:
            failures += 1
            if failures >= policy.attempts:
                raise
            delay = backoff_delay(policy, failures)
            _log.info("kms_retry", attempt=failures, delay_s=round(delay, 3),
                      error=type(exc).__name__, **(event_context or {}))
            await asyncio.sleep(delay)
