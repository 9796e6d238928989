"""A second application on the QKD network: an off-site backup that takes key as fast as it comes.

A QKD link's key is shared by every application whose keys cross it. In the RoNaQCI demo a
backup service between Constanta and Bucharest (its own SAEs, ``sae-constanta-backup`` and
``sae-bucharest-backup``) asks its KME for keys whenever the span has more than
:data:`RESERVE_KEYS` in stock, so while it runs the gateways find the Slobozia-Constanta span
nearly empty: their rotation stretches and ``kms_low_stock`` is raised. When the backup ends,
the span refills at its key rate and the alarm clears at the gateways' next look at the stock.

The backup is a real ETSI GS QKD 014 client of the simulated KMEs (status, then enc_keys, over
mutual TLS from the Constanta namespace). It drops the keys it receives at once: they are never
logged, printed or kept, and only their number is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.demo.errors import DemoError
from gateway.demo.kmsprobe import kme_request

__all__ = ["RESERVE_KEYS", "Backup", "BackupStats"]

# Keys the backup leaves on the span: enough for a gateway's pool request (batch 2) to succeed,
# so the tunnel keeps rotating (stretched) instead of failing closed.
RESERVE_KEYS = 2
# How often the backup asks: a 2 key/s span gains ~1 key between two looks.
POLL_S = 0.5
_REQUEST_TIMEOUT_S = 5.0


@dataclass
class BackupStats:
    keys_taken: int = 0
    requests: int = 0
    errors: int = 0
    last_error: str = ""


class Backup:
    """Drain a KME path from namespace ``netns`` until :meth:`stop`.

    Args:
        netns: the namespace the application runs in.
        host, port, kme_id: its KME.
        sae_id: its SAE ID (certificate ``<sae_id>.crt`` in ``pki_dir``); slave_sae_id: the SAE
            at the far end its keys are for.
        max_per_request: the KME's ``max_key_per_request`` (128 for the simulator).
    """

    def __init__(self, netns: str, host: str, port: int, kme_id: str, sae_id: str,
                 slave_sae_id: str, pki_dir: Path, *, max_per_request: int = 128) -> None:
        self.netns, self.host, self.port, self.kme_id = netns, host, port, kme_id
        self.slave = quote(slave_sae_id, safe="")
        self.ca_file, self.cert_file = pki_dir / "ca.crt", pki_dir / f"{sae_id}.crt"
        self.key_file = pki_dir / f"{sae_id}.key"
        self.max_per_request = max_per_request
        self.stats = BackupStats()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def _request(self, method: str, what: str,
                       body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await kme_request(self.netns, self.host, self.port, method,
                                 f"/api/v1/keys/{self.slave}/{what}", kme_id=self.kme_id,
                                 ca_file=self.ca_file, cert_file=self.cert_file,
                                 key_file=self.key_file, body=body, timeout=_REQUEST_TIMEOUT_S)

    async def _take_once(self) -> None:
        status = await self._request("GET", "status")
        stock = status.get("stored_key_count")
        if not isinstance(stock, int) or stock <= RESERVE_KEYS:
            return
        number = min(stock - RESERVE_KEYS, self.max_per_request)
        answer = await self._request("POST", "enc_keys", {"number": number})
        keys = answer.get("keys")
        self.stats.keys_taken += len(keys) if isinstance(keys, list) else 0
        del answer, keys  # the key material goes no further than this frame

    async def run(self) -> BackupStats:
        """Take key until stopped; failures (a 503 when a gateway was faster) are counted and
        the next look comes :data:`POLL_S` later."""
        while not self._stop.is_set():
            self.stats.requests += 1
            try:
                await self._take_once()
            except DemoError as exc:
                self.stats.errors += 1
                self.stats.last_error = str(exc)[:200]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL_S)
        return self.stats
