"""The interface between the gateway and a site's key management system.

Every KMS backend (ETSI GS QKD 014, SKIP) implements :class:`KeySource`; the key pool, the
daemon and the tests depend only on this module, never on a concrete client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gateway.keymaterial import Secret

__all__ = ["KeySource", "KeyStatus", "QKDKey"]


@dataclass(frozen=True, slots=True)
class QKDKey:
    """One QKD key as delivered by a KME. ``key_id`` is the canonical (lower-case) UUID text."""

    key_id: str
    key: Secret
    key_id_extension: dict[str, Any] | None = None
    key_extension: dict[str, Any] | None = None

    @property
    def size_bits(self) -> int:
        return len(self.key) * 8


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """ETSI GS QKD 014 Status, field for field (sizes in bits)."""

    source_kme_id: str
    target_kme_id: str
    master_sae_id: str
    slave_sae_id: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_sae_id_count: int
    status_extension: dict[str, Any] | None = field(default=None)


@runtime_checkable
class KeySource(Protocol):
    """A client of one KME, bound to this site's SAE identity (its client certificate)."""

    @property
    def name(self) -> str:
        """The KMS name from the configuration, for logs and metrics."""
        ...

    async def status(self, slave_sae_id: str) -> KeyStatus:
        """Get status for the link towards ``slave_sae_id``."""
        ...

    async def get_keys(
        self, slave_sae_id: str, number: int = 1, size: int | None = None
    ) -> list[QKDKey]:
        """Get key (enc_keys): this SAE becomes the master SAE of the returned keys."""
        ...

    async def get_keys_by_id(self, master_sae_id: str, key_ids: Sequence[str]) -> list[QKDKey]:
        """Get key with key IDs (dec_keys): fetch keys that ``master_sae_id`` obtained."""
        ...

    async def aclose(self) -> None:
        """Close connections; idempotent."""
        ...
