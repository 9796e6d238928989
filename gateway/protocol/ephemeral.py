"""The rekey ephemerals: one pair per side serves the exchanges of a burst towards one peer.

Every rekey mixes an ML-KEM-768 and an X25519 secret into its keys. Made per exchange, the
ephemerals were the largest single cost of a rekey (ML-KEM keygen ~117 us and its encapsulation
key ~23 us, an X25519 key ~40 us and its exchange ~42 us per side, on this machine kind).
Rotations come in bursts (the 1 s grid of gateway.daemon.schedule; up to
MAX_CONCURRENT_EXCHANGES exchanges in flight per peer), so a side's pair serves the exchanges it
starts (or answers) towards one peer while the pair is young, within these bounds:

* **Young**: a pair serves new exchanges for :data:`SHARE_WINDOW_S` after it was made, at most
  :data:`SHARE_MAX_USES` of them, and never two of one tunnel (a retry gets a new pair).
* **Short-lived**: the peer's pairs are held weakly here; the exchanges using a pair hold it
  until they have used it (the initiator's: until its RekeyResp is processed; the responder's:
  until the exchange ends). Then its private keys are gone, never kept until the next burst.
* **Per peer, per role**: a pair never serves two peers, and the pairs for exchanges this side
  starts and those it answers are distinct.

Why each exchange's keys stay as strong, and what is weaker (docs/protocol.md §6):

* ML-KEM-768 is IND-CCA2: one encapsulation key serves any number of encapsulations, each with its
  own secret. Every exchange still gets its own ss_MLKEM (the responder encapsulates per
  exchange, to a fresh random message).
* Two exchanges of a burst may share ss_X25519 (both sides' pairs shared). Their keys are still
  distinct and independent: the key schedule's final expansion runs over the transcript hash,
  which binds the tunnel, the epoch, both nonces, the key IDs, ek and ct. The "secret while any
  one of QKD, ML-KEM, X25519 holds" argument is per exchange and unchanged.
* What is weaker (docs/protocol.md §6): recovering one ML-KEM decapsulation key or one X25519
  private key (a future quantum computer against recorded traffic) opens that input of up to
  SHARE_MAX_USES exchanges instead of one; and a pair outlives the exchanges that finished
  early, up to the window plus the slowest exchange it started (at most ``rekey_timeout``, 30 s
  by default). A tunnel that completes another exchange within that time (an immediate rekey,
  a ``rekey_interval`` shorter than that) has a superseded epoch whose ML-KEM and X25519 inputs a
  compromise of the process before the pair is gone reveals (with QKD in its mode its QKD keys
  are gone already, so its keys stay secret; in mode ``pqc`` they do not).

Pure: no clock (``now`` is an argument), no I/O; the randomness is the library's.
"""

from __future__ import annotations

import weakref

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from gateway.keymaterial import Secret

__all__ = ["SHARE_MAX_USES", "SHARE_WINDOW_S", "EphemeralPair", "Ephemerals"]

#: Seconds after its making during which a pair may serve a new exchange: one grid step of
#: rotations (gateway.daemon.schedule, COALESCE_GRID 1 s) lands within it. A tunnel may still
#: start two exchanges within it (a retry, an immediate rekey): the second gets another pair.
SHARE_WINDOW_S = 0.5
#: Exchanges one pair may serve: MAX_CONCURRENT_EXCHANGES, a full burst towards one peer.
SHARE_MAX_USES = 64

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class EphemeralPair:
    """An X25519 key (and, once asked for, an ML-KEM-768 key) serving a burst's exchanges.

    Its repr, like every object here, shows no key material."""

    __slots__ = ("__weakref__", "_dh", "_ek", "_kem", "_x", "born", "tunnels", "x_pub")

    def __init__(self, now: float) -> None:
        self._x = x25519.X25519PrivateKey.generate()
        self.x_pub = self._x.public_key().public_bytes(*_RAW)
        self._kem: mlkem.MLKEM768PrivateKey | None = None
        self._ek = b""
        self.born = now
        self.tunnels: set[str] = set()
        # The X25519 secret with each peer public seen, so a burst computes it once. At most
        # one entry per exchange served (SHARE_MAX_USES), whatever the peer sends.
        self._dh: dict[bytes, Secret] = {}

    def serves(self, tunnel: str, now: float) -> bool:
        """Whether a new exchange of ``tunnel`` may use this pair at ``now``."""
        return (now - self.born < SHARE_WINDOW_S and len(self.tunnels) < SHARE_MAX_USES
                and tunnel not in self.tunnels)

    def ek(self) -> bytes:
        """The ML-KEM-768 encapsulation key (the private key made on first use)."""
        if self._kem is None:
            self._kem = mlkem.MLKEM768PrivateKey.generate()
            self._ek = self._kem.public_key().public_bytes(*_RAW)
        return self._ek

    def decapsulate(self, ct: bytes) -> Secret:
        """ss_MLKEM of a ciphertext sent to :meth:`ek`. Raises ValueError if it is malformed
        (or no encapsulation key was made)."""
        if self._kem is None:
            raise ValueError("no ML-KEM key was offered")
        return Secret(self._kem.decapsulate(ct))

    def exchange(self, peer_public: bytes) -> Secret:
        """ss_X25519 with a peer's public key. Raises ValueError for a malformed or low-order
        key (never cached)."""
        ss = self._dh.get(peer_public)
        if ss is None:
            ss = Secret(self._x.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public)))
            if len(self._dh) < SHARE_MAX_USES:
                self._dh[bytes(peer_public)] = ss
        return ss


class Ephemerals:
    """One peer's pairs: the young one for exchanges this side starts, the young one for those
    it answers (both held weakly), and the last encapsulation key the peer sent, parsed."""

    __slots__ = ("_initiator", "_peer_ek", "_responder")

    def __init__(self) -> None:
        self._initiator: weakref.ref[EphemeralPair] | None = None
        self._responder: weakref.ref[EphemeralPair] | None = None
        self._peer_ek: tuple[bytes, mlkem.MLKEM768PublicKey] | None = None

    def initiator(self, tunnel: str, now: float) -> EphemeralPair:
        """The pair for an exchange ``tunnel`` starts at ``now``; the caller holds it for as
        long as the exchange needs it."""
        pair, self._initiator = _serving(self._initiator, tunnel, now)
        return pair

    def responder(self, tunnel: str, now: float) -> EphemeralPair:
        """The pair for an exchange of ``tunnel`` this side answers at ``now`` (held by the
        caller for the exchange's life)."""
        pair, self._responder = _serving(self._responder, tunnel, now)
        return pair

    def encapsulate(self, ek: bytes) -> tuple[Secret, bytes]:
        """A fresh (ss_MLKEM, ct) to the peer's encapsulation key ``ek``; a burst's shared key
        is parsed once. Raises ValueError if ``ek`` is malformed."""
        if self._peer_ek is None or self._peer_ek[0] != ek:
            self._peer_ek = (bytes(ek), mlkem.MLKEM768PublicKey.from_public_bytes(ek))
        ss, ct = self._peer_ek[1].encapsulate()
        return Secret(ss), ct


def _serving(ref: weakref.ref[EphemeralPair] | None, tunnel: str,
             now: float) -> tuple[EphemeralPair, weakref.ref[EphemeralPair]]:
    """The young pair behind ``ref`` if it may serve ``tunnel`` now, else a new one; either way
    booked for ``tunnel``."""
    pair = ref() if ref is not None else None
    if ref is None or pair is None or not pair.serves(tunnel, now):
        pair = EphemeralPair(now)
        ref = weakref.ref(pair)
    pair.tunnels.add(tunnel)
    return pair, ref
