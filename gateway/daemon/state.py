"""The daemon's state directory: what a restarted daemon needs to resume without a flap.

One JSON file per tunnel, ``<state_dir>/tunnels/<name>.json``, written atomically (the new version
into the hidden spare ``.spare-<name>.json``, sync, names swapped) with mode 0600 in a 0700
directory; the spare then holds the previous version and is never read. While the store's committer
runs (a daemon: :meth:`StateStore.start`), a save only notes the file and returns; the committer
writes the noted files in batches in a worker thread, one sync per batch (gateway.daemon.commit:
group commit), and :meth:`StateStore.close` writes what is left. Without it (``qkd-gateway
failsafe``, tools) each save is written before it returns. It records epochs, QKD key IDs and
times, **never keys**: a restarted daemon cannot and must not recover key material; it resumes the
epoch counter (so epochs never repeat) and knows how long the installed key has left before
``reject_after`` (on the boot clock, see gateway.daemon.clock). It also records a one-way
fingerprint of the installed key, so that a restarted daemon can check, by reading the key back
from the data plane, that the data plane still holds that very key before it reports it.

``<state_dir>/daemon.lock`` is flock()ed by the running daemon: a second daemon on the same state
directory refuses to start, and ``qkd-gateway failsafe`` acts only while no daemon holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from gateway.daemon.commit import GroupCommit, remove, unsettle
from gateway.keymaterial import Secret

__all__ = ["USED_KEY_IDS_INTERVAL", "StateError", "StateLock", "StateStore", "TunnelState",
           "UsedKeyIdsSaver", "fingerprint"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION = 2
# Version 1 files (no boot clock, no fingerprint) still load; they can never be resumed from.
_READABLE = (1, 2)
_FINGERPRINT_LABEL = b"qkd-gateway/1 state-dir key fingerprint"
#: The used-QKD-key-ID memory is written at most this often (and at a clean stop). It is the
#: whole memory each time (at least 4,096 IDs per peer and KMS, 4 per tunnel: ~0.16 MB of JSON,
#: ~1.6 MB at 10,000 tunnels) and it changes at every rekey: written at every activation it cost
#: more CPU than the rest of the rekey. A crash forgets at most the IDs of the last interval,
#: which the KMS refuses to deliver a second time anyway (the memory only stops a peer that
#: re-offers an ID before any KMS call).
USED_KEY_IDS_INTERVAL = 5.0

UsedKeyIds = dict[str, dict[str, list[str]]]


def fingerprint(tunnel: str, epoch: int, key: Secret) -> str:
    """A one-way, per-tunnel and per-epoch fingerprint of an installed key (hex SHA-256).

    The key is 256 bits from the key schedule (or the OS RNG), so its hash reveals nothing
    usable; binding the tunnel and epoch keeps two tunnels' fingerprints unrelated."""
    h = hashlib.sha256(_FINGERPRINT_LABEL)
    h.update(len(tunnel).to_bytes(2, "big") + tunnel.encode() + epoch.to_bytes(8, "big"))
    h.update(key.reveal())
    return h.hexdigest()


class StateError(RuntimeError):
    """The state directory cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class TunnelState:
    tunnel: str
    epoch: int  # the last activated epoch
    activated_at: float  # wall-clock (time.time()) when that epoch was activated: display only
    key_ids: tuple[str, ...] = field(default=())  # QKD key IDs that went into it (already spent)
    policy: str = ""
    achieved: str = ""  # which inputs actually went into the key, e.g. "qkd+pqc"
    boot_id: str = ""  # the boot during which it was activated (gateway.daemon.clock)
    activated_boot: float | None = None  # CLOCK_BOOTTIME at activation: lifetimes count from it
    key_fingerprint: str = ""  # fingerprint() of the key installed for this epoch
    closed: bool = False  # the tunnel was failed closed after this epoch (a random key is set)
    # ESP tunnels only (0 otherwise, and then not written): the SPIs of the epoch's inbound and
    # outbound SAs, so a restarted daemon can read exactly those SAs back (GETSA) and compare
    # their keys with key_fingerprint. SPIs are public (they are in every ESP header).
    spi_in: int = 0
    spi_out: int = 0


#: Fields written only when set, so a WireGuard tunnel's file stays as older versions wrote it
#: (and older versions can still read it).
_OPTIONAL = ("spi_in", "spi_out")
_FIELDS = tuple(f.name for f in fields(TunnelState))


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.root = directory
        self._dir = directory / "tunnels"
        #: The pending writes and their committer (its counters: saves, batches, syncs, ...).
        self.commit = GroupCommit()

    # -- the committer ----------------------------------------------------------------------------
    def start(self, report: Callable[[OSError | None], None] | None = None) -> None:
        """From now on (on the running loop) saves return at once and are written in batches.
        ``report(exc)`` hears of each batch that failed (``exc``) and of the recovery (None):
        a batch that failed is retried; until one succeeds, :meth:`save` raises that error."""
        self.commit.report = report
        self.commit.start()

    async def flush(self) -> None:
        """Everything saved so far durable (raises OSError if that write fails)."""
        await self.commit.flush()

    async def close(self) -> None:
        """Stop the committer after writing everything pending (raises OSError if that last
        write fails); later saves are written synchronously again."""
        await self.commit.close()

    def prepare(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self._dir.parent, 0o700)
            os.chmod(self._dir, 0o700)
        except OSError as exc:
            raise StateError(
                f"cannot create state directory {self._dir}: {exc.strerror}; "
                "set state_dir to a writable directory (systemd: StateDirectory=)"
            ) from None

    def _path(self, tunnel: str) -> Path:
        if not _NAME.match(tunnel):
            raise StateError(f"tunnel name {tunnel!r} cannot be used as a file name")
        return self._dir / f"{tunnel}.json"

    def load(self, tunnel: str) -> TunnelState | None:
        path = self._path(tunnel)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(
                f"state file {path} is unreadable ({exc}); remove it to start over"
            ) from None
        try:
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            if raw.pop("version") not in _READABLE:
                raise ValueError("unknown version")
            raw["key_ids"] = tuple(raw.get("key_ids", ()))
            state = TunnelState(**raw)
            _check_types(state, tunnel)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"state file {path} is malformed ({exc}); remove it to start over"
            ) from None
        return state

    def remove(self, tunnel: str) -> None:
        """Forget a tunnel that left the configuration (idempotent; a pending save of its file
        is dropped)."""
        path = self._path(tunnel)
        if not self.commit.discard(path):  # else deleted once the batch writing it is done
            remove(path)  # and its spare

    def load_used_key_ids(self) -> UsedKeyIds:
        """The protocol's memory of used QKD key IDs ({peer: {kms: [ids]}}), {} if none or
        unreadable (the KMS refuses a second delivery anyway; this catches a peer re-offering
        an ID before any KMS call)."""
        try:
            raw = json.loads((self.root / "used_key_ids.json").read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {str(peer): {str(k): [str(i) for i in ids if isinstance(i, str)]
                            for k, ids in kms.items() if isinstance(ids, list)}
                for peer, kms in raw.items() if isinstance(kms, dict)}

    def save_used_key_ids(self, data: UsedKeyIds) -> None:
        self._write(self.root / "used_key_ids.json", json.dumps(data, sort_keys=True).encode())

    def save(self, state: TunnelState) -> None:
        path = self._path(state.tunnel)
        # Field by field, not dataclasses.asdict (a deep copy: 3x the cost of the whole save).
        values = {k: v for k in _FIELDS if (v := getattr(state, k)) or k not in _OPTIONAL}
        self._write(path, json.dumps({"version": _VERSION, **values}, sort_keys=True).encode())

    def _write(self, path: Path, data: bytes) -> None:
        """Atomically (gateway.daemon.commit.write_durably): noted for the committer's next batch
        while it runs, else written now. While the committer's last batch has failed, refused
        with its error (OSError, as a write of its own would have failed), not noted."""
        commit = self.commit
        if commit.running:
            err = commit.error
            if err is not None:
                raise OSError(err.errno, err.strerror or str(err), str(path))
            commit.put(path, data)
            return
        commit.put(path, data)
        commit.write_now()


def _check_types(st: TunnelState, tunnel: str) -> None:
    """A state file is input like any other: every field must have its type (a file edited by
    hand, or cut short by a full disk, is reported, never half-used)."""
    def number(v: object) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if st.tunnel != tunnel:
        raise ValueError(f"it names tunnel {st.tunnel!r}")
    if not isinstance(st.epoch, int) or isinstance(st.epoch, bool) or st.epoch < 0:
        raise ValueError("epoch is not a whole number >= 0")
    if not number(st.activated_at) or not (st.activated_boot is None
                                           or number(st.activated_boot)):
        raise ValueError("a time is not a number")
    if not all(isinstance(k, str) for k in st.key_ids):
        raise ValueError("key_ids is not a list of strings")
    for name in ("policy", "achieved", "boot_id", "key_fingerprint"):
        if not isinstance(getattr(st, name), str):
            raise ValueError(f"{name} is not a string")
    if not isinstance(st.closed, bool):
        raise ValueError("closed is not true/false")
    for name in _OPTIONAL:
        value = getattr(st, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
            raise ValueError(f"{name} is not an SPI (a whole number below 2^32)")


class UsedKeyIdsSaver:
    """Saves the protocol's used-QKD-key-ID memory when it moved (``generation()`` changed), at
    most every USED_KEY_IDS_INTERVAL: a timer on the running loop saves what moved meanwhile.
    ``failed(exc)`` hears of a save the store refused."""

    def __init__(self, store: StateStore, export: Callable[[], UsedKeyIds],
                 generation: Callable[[], int], failed: Callable[[OSError], None]) -> None:
        self._store, self._export, self._generation, self._failed = \
            store, export, generation, failed
        self._saved = generation()  # the generation written last (at first: nothing new)
        self._saved_at = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self.saves = 0

    def moved(self) -> None:
        """After an activation: save now, or when the interval since the last save is over."""
        if self._generation() == self._saved or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._saved_at + USED_KEY_IDS_INTERVAL - loop.time()
        if wait > 0:
            self._timer = loop.call_later(wait, self.save)
        else:
            self.save()

    def save(self) -> None:
        """Save now if the memory moved since the last save (a clean stop calls this)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gen = self._generation()
        if gen == self._saved:
            return
        self._saved = gen
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to time
            self._saved_at = asyncio.get_running_loop().time()
        try:
            self._store.save_used_key_ids(self._export())
        except OSError as exc:
            self._failed(exc)
            return
        self.saves += 1


class StateLock:
    """``<state_dir>/daemon.lock``, held with flock() for as long as a daemon runs.

    The kernel drops the lock when the process dies however it dies, so a stale lock file never
    blocks anything."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "daemon.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False if another process does."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        unsettle()  # another process may have written here since this one last did
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
