"""The master-side key pool: QKD keys fetched in batches ahead of need.

One pool per (KeySource, slave SAE ID, key size). A background task keeps between
``low_water`` and ``high_water`` keys in memory by calling enc_keys in batches, so ``take()``
normally returns at once instead of waiting on HTTP. Keys live only in this process's memory,
each is handed out exactly once, and the keys still held at close are counted as ``wasted``
(the KME has already erased them: they cannot be used by anyone).

A second task polls Get status so the daemon can see how many keys the KMS has in stock
(``stored_key_count``) and rotate less eagerly when the stock runs low.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

import structlog

from gateway.kms.errors import KeyPoolClosed, KeyPoolTimeout
from gateway.kms.retry import RetryPolicy, backoff_delay
from gateway.kms.types import KeySource, QKDKey
from gateway.kms.wire import STOCK_UNKNOWN

__all__ = ["KeyPool", "PoolStats"]

_log = structlog.get_logger("gateway.kms.pool")

# The refill loop backs off from 0.1 s to 10 s: long enough not to hammer a KME that is out
# of keys (QKD links make keys at a fixed rate), short enough to notice it is back quickly.
DEFAULT_BACKOFF = RetryPolicy(attempts=1, base_delay=0.1, max_delay=10.0)
# Key stock changes at the QKD link's key rate; once every 30 s is plenty for rotation policy.
DEFAULT_STATUS_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot for metrics. ``wasted`` counts keys discarded at close."""

    size: int
    capacity: int
    refills: int
    failures: int
    fetched: int
    handed_out: int
    wasted: int
    stored_key_count: int | None
    last_error: str | None


class KeyPool:
    """Keys for one slave SAE, fetched ahead of need from one :class:`KeySource`.

    ``size_bits``: the key size asked for. ``low_water``: refill starts when fewer keys are
    held. ``high_water``: refill stops here; it is also the capacity (the pool never holds
    more). ``batch``: at most this many keys per enc_keys call (further capped by the KME's
    ``max_key_per_request`` once a status poll has seen it). ``status_interval``: seconds
    between status polls (None: never poll). ``backoff``: delays after failed refills.
    """

    def __init__(
        self,
        source: KeySource,
        slave_sae_id: str,
        size_bits: int,
        *,
        low_water: int = 16,
        high_water: int = 64,
        batch: int = 64,
        status_interval: float | None = DEFAULT_STATUS_INTERVAL,
        backoff: RetryPolicy = DEFAULT_BACKOFF,
    ) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(f"key pool needs 0 <= low_water ({low_water}) < high_water "
                             f"({high_water})")
        if batch < 1:
            raise ValueError("key pool batch must be >= 1")
        if size_bits <= 0 or size_bits % 8:
            raise ValueError(f"key pool size_bits {size_bits} must be a positive multiple of 8")
        self._source = source
        self._slave = slave_sae_id
        self._size_bits = size_bits
        self._low = low_water
        self._high = high_water
        self._batch = batch
        self._status_interval = status_interval
        self._backoff = backoff
        self._keys: collections.deque[QKDKey] = collections.deque()
        self._changed = asyncio.Condition()
        self._need = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._refills = self._failures = self._fetched = self._handed_out = self._wasted = 0
        self._stored_key_count: int | None = None
        self._max_per_request: int | None = None
        self._last_error: str | None = None
        self._log = _log.bind(kms=source.name, slave_sae=slave_sae_id, size_bits=size_bits)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the refill (and status) tasks; the first refill begins at once."""
        if self._tasks or self._closed:
            return
        self._need.set()
        self._tasks.append(asyncio.create_task(self._refill_loop(), name="kms-pool-refill"))
        if self._status_interval is not None:
            self._tasks.append(asyncio.create_task(self._status_loop(), name="kms-pool-status"))

    async def aclose(self) -> None:
        """Stop the tasks, drop the remaining keys (counted as wasted), wake all waiters."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._changed:
            self._wasted += len(self._keys)
            self._keys.clear()
            self._changed.notify_all()
        self._log.info("kms_pool_closed", wasted=self._wasted, handed_out=self._handed_out)

    async def __aenter__(self) -> KeyPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- taking keys ----------------------------------------------------------------------------

    async def take(self, n: int = 1, timeout: float = 5.0) -> list[QKDKey]:
        """``n`` keys, each handed out exactly once; waits up to ``timeout`` seconds for them.

        Raises :class:`KeyPoolTimeout` when they do not arrive in time (the KMS is slow, down
        or out of keys: the message carries the last KMS error) and :class:`KeyPoolClosed`.
        """
        if not 1 <= n <= self._high:
            raise ValueError(f"take(n={n}): n must be between 1 and high_water ({self._high})")
        if self._closed:
            raise KeyPoolClosed(f"key pool {self._source.name}->{self._slave} is closed")
        if not self._tasks:
            await self.start()  # a pool used without start() still fills instead of timing out
        try:
            async with asyncio.timeout(timeout), self._changed:
                while len(self._keys) < n:
                    if self._closed:
                        raise KeyPoolClosed(
                            f"key pool {self._source.name}->{self._slave} closed while waiting")
                    self._need.set()
                    await self._changed.wait()
                # No await between the check and the pops: nobody else can take these keys.
                keys = [self._keys.popleft() for _ in range(n)]
        except TimeoutError:
            raise KeyPoolTimeout(
                f"key pool {self._source.name}->{self._slave}: {n} key(s) of {self._size_bits} "
                f"bits not available within {timeout} s (held {len(self._keys)}; last KMS "
                f"error: {self._last_error or 'none'}): check the KMS and its key rate"
            ) from None
        self._handed_out += n
        if len(self._keys) < self._low:
            self._need.set()
        return keys

    # -- observation ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._keys)

    @property
    def stored_key_count(self) -> int | None:
        """The KMS's ``stored_key_count`` from the last status poll (None before the first)."""
        return self._stored_key_count

    def stats(self) -> PoolStats:
        return PoolStats(
            size=len(self._keys), capacity=self._high, refills=self._refills,
            failures=self._failures, fetched=self._fetched, handed_out=self._handed_out,
            wasted=self._wasted, stored_key_count=self._stored_key_count,
            last_error=self._last_error)

    async def poll_status(self) -> None:
        """One status poll now (also run periodically by the status task)."""
        status = await self._source.status(self._slave)
        unknown = bool((status.status_extension or {}).get(STOCK_UNKNOWN))
        self._stored_key_count = None if unknown else status.stored_key_count
        if status.max_key_per_request > 0:
            self._max_per_request = status.max_key_per_request

    # -- background tasks ---------------------------------------------------------------------

    async def _refill_loop(self) -> None:
        failures_in_row = 0
        while not self._closed:
            await self._need.wait()
            self._need.clear()
            while not self._closed and len(self._keys) < self._high:
                want = min(self._batch, self._high - len(self._keys),
                           self._max_per_request or self._batch)
                try:
                    keys = await self._source.get_keys(self._slave, want, self._size_bits)
                except Exception as exc:
                    # Any failure (a KmsError, or a bug in a KeySource) must not kill the
                    # refill task silently: record it, back off, try again.
                    failures_in_row += 1
                    self._failures += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                    delay = backoff_delay(self._backoff, failures_in_row)
                    self._log.warning("kms_pool_refill_failed", error=type(exc).__name__,
                                      failures=failures_in_row, retry_in_s=round(delay, 3))
                    await asyncio.sleep(delay)
                    continue
                failures_in_row = 0
                async with self._changed:
                    self._keys.extend(keys)
                    self._refills += 1
                    self._fetched += len(keys)
                    self._changed.notify_all()
                self._log.debug("kms_pool_refilled", added=len(keys), size=len(self._keys))

    async def _status_loop(self) -> None:
        assert self._status_interval is not None
        while not self._closed:
            try:
                await self.poll_status()
            except Exception as exc:
                self._log.warning("kms_pool_status_failed", error=type(exc).__name__)
            await asyncio.sleep(self._status_interval)
