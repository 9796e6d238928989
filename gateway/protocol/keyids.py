"""Memory of QKD key IDs already used, per (peer, KMS), with an export for the daemon's state.

A key ID is recorded when its key was really used: when the responder's fetch delivered it, or
when the initiator derived keys from it. A fetch that failed or an attempt refused before the
fetch records nothing (the key may still be usable, see rekey.py's spare keys). A peer that
offers a recorded ID again is refused with KEY_REUSE before any fetch; the KMS refuses a second
delivery too, this catches a misbehaving peer earlier and also across a KMS that does not.

The daemon persists :meth:`KeyIdMemory.export` (key IDs only: they are public, peers exchange
them in clear) and hands it back with :meth:`KeyIdMemory.restore` after a restart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from gateway.protocol.constants import USED_KEY_ID_MEMORY

__all__ = ["KeyIdMemory", "PeerKeyIds", "UsedKeyIds"]

# Key IDs are ETSI UUIDs (36 characters) or SKIP hex IDs; a restored entry longer than this or
# with other characters is ignored rather than trusted.
_MAX_ID_LEN = 64


class UsedKeyIds:
    """Bounded memory of key IDs (oldest forgotten first)."""

    __slots__ = ("_ids", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, key_ids: Iterable[str]) -> None:
        for k in key_ids:
            self._ids[k] = None
            self._ids.move_to_end(k)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def ordered(self) -> list[str]:
        return list(self._ids)


class KeyIdMemory:
    """One :class:`UsedKeyIds` per (peer, KMS name); sized by the tunnels sharing the pair."""

    def __init__(self) -> None:
        self._mem: dict[tuple[str, str], UsedKeyIds] = {}
        self._tunnels: dict[tuple[str, str], int] = {}
        self.generation = 0  # bumped on every addition: the daemon saves when it changed

    def configure(self, pairs: Mapping[tuple[str, str], int]) -> None:
        """(peer, kms) -> number of tunnels using it. Pairs no longer used are forgotten."""
        self._tunnels = dict(pairs)
        for pair in list(self._mem):
            if pair not in pairs:
                del self._mem[pair]
        for pair, n in pairs.items():
            mem = self._mem.setdefault(pair, UsedKeyIds(USED_KEY_ID_MEMORY))
            mem.limit = max(USED_KEY_ID_MEMORY, 4 * n)

    def view(self, peer: str) -> PeerKeyIds:
        return PeerKeyIds(self, peer)

    def seen(self, peer: str, kms: str, key_id: str) -> bool:
        mem = self._mem.get((peer, kms))
        return mem is not None and key_id in mem

    def add(self, peer: str, kms: str, key_ids: Iterable[str]) -> None:
        mem = self._mem.get((peer, kms))
        if mem is None:
            mem = self._mem[(peer, kms)] = UsedKeyIds(USED_KEY_ID_MEMORY)
        mem.add(key_ids)
        self.generation += 1

    def export(self) -> dict[str, dict[str, list[str]]]:
        """{peer: {kms: [key IDs, oldest first]}}: JSON-ready, key IDs only."""
        out: dict[str, dict[str, list[str]]] = {}
        for (peer, kms), mem in sorted(self._mem.items()):
            if len(mem):
                out.setdefault(peer, {})[kms] = mem.ordered()
        return out

    def restore(self, data: Mapping[str, Mapping[str, Sequence[str]]]) -> int:
        """Merge an export back (after a restart). Unknown (peer, KMS) pairs and malformed IDs
        are skipped; returns the number of IDs taken."""
        taken = 0
        for peer, per_kms in data.items():
            for kms, ids in per_kms.items():
                if (peer, kms) not in self._mem:
                    continue
                good = [k for k in ids if isinstance(k, str) and _plausible(k)]
                self._mem[(peer, kms)].add(good)
                taken += len(good)
        return taken


def _plausible(key_id: str) -> bool:
    return 0 < len(key_id) <= _MAX_ID_LEN and all(c.isalnum() or c in "-_.:" for c in key_id)


class PeerKeyIds:
    """The part of the memory a tunnel sees: its peer's (KMS -> IDs)."""

    __slots__ = ("_mem", "_peer")

    def __init__(self, mem: KeyIdMemory, peer: str) -> None:
        self._mem, self._peer = mem, peer

    def seen(self, kms: str, key_id: str) -> bool:
        return self._mem.seen(self._peer, kms, key_id)

    def add(self, kms: str, key_ids: Iterable[str]) -> None:
        self._mem.add(self._peer, kms, key_ids)
