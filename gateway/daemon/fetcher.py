"""Slave-side key fetches, coalesced: many rekeys' dec_keys become one ETSI 014 request.

The master side takes QKD keys from a pool that the KMS fills in batches (gateway.kms.pool); the
slave side cannot fetch ahead (it learns key IDs only from the peer's RekeyInit). Without this,
every rekey costs the slave one mutual-TLS HTTPS exchange. With it, at most one dec_keys request
per (KMS, master SAE) is in flight; every key ID asked for meanwhile waits for the next request,
which carries them all (ETSI GS QKD 014 allows many key_IDs in one Key IDs body). A lone rekey
is not delayed (its request goes out at once); under load, batches form by themselves.

Batches are per master SAE, i.e. per peer: a peer that sends a key ID the KME does not know can
only spoil its own batch. When a batch is refused as "not found", its IDs are fetched one by one
so that the good ones still arrive (a refused dec_keys consumes nothing); any other failure fails
the whole batch, since the KME may have consumed the keys (KmsIndeterminate: the rekeys abort and
start again with new keys, never repeating a dec_keys).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.kms import KeySource, KmsBadRequest, QKDKey

__all__ = ["MAX_BATCH", "FetchBatcher"]

#: Key IDs in one dec_keys request. ETSI 014 KMEs advertise max_key_per_request (the embedded
#: KME: 128; deployed KMEs 10-1000); a small fixed cap stays under every one seen.
MAX_BATCH = 32


@dataclass
class _Wanted:
    key_ids: tuple[str, ...]
    done: asyncio.Future[list[QKDKey]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class FetchBatcher:
    """Coalesces ``get_keys_by_id`` calls of one KMS client."""

    def __init__(self, source: KeySource, max_batch: int = MAX_BATCH) -> None:
        self.source = source
        self._max = max_batch
        self._queues: dict[str, list[_Wanted]] = {}
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0  # dec_keys requests sent (for the benchmark and tests)

    async def fetch(self, master_sae_id: str, key_ids: Sequence[str]) -> list[QKDKey]:
        """The keys ``key_ids`` (in that order), fetched alone or together with others."""
        want = _Wanted(tuple(key_ids))
        self._queues.setdefault(master_sae_id, []).append(want)
        if master_sae_id not in self._busy:
            self._busy.add(master_sae_id)
            task = asyncio.get_running_loop().create_task(self._drain(master_sae_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(want.done)

    async def _drain(self, master: str) -> None:
        try:
            while self._queues.get(master):
                queue = self._queues[master]
                batch: list[_Wanted] = []
                count = 0
                while queue and (not batch or count + len(queue[0].key_ids) <= self._max):
                    w = queue.pop(0)
                    batch.append(w)
                    count += len(w.key_ids)
                await self._send(master, batch)
        finally:
            self._busy.discard(master)
            if not self._queues.get(master):
                self._queues.pop(master, None)

    async def _send(self, master: str, batch: list[_Wanted]) -> None:
        ids = [k for w in batch for k in w.key_ids]
        try:
            self.requests += 1
            keys = await self.source.get_keys_by_id(master, ids)
        except KmsBadRequest as exc:
            if exc.not_found and len(batch) > 1:
                for w in batch:  # find the bad ones; a refused request consumed nothing
                    await self._send(master, [w])
                return
            _fail(batch, exc)
            return
        except Exception as exc:
            _fail(batch, exc)
            return
        # The client checked that the answer holds exactly the asked IDs, in the asked order.
        pos = 0
        for w in batch:
            if not w.done.done():
                w.done.set_result(keys[pos:pos + len(w.key_ids)])
            pos += len(w.key_ids)


def _fail(batch: list[_Wanted], exc: BaseException) -> None:
    for w in batch:
        if not w.done.done():
            w.done.set_exception(exc)
            w.done.exception()  # a caller that gave up (timeout) must not leave a log warning
