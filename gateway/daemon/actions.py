"""Perform what the protocol core asks for, and feed the results back.

The core (gateway.protocol) is pure: it emits actions such as "take a QKD key from KMS x" or
"activate epoch 7 of tunnel y". This runner performs them with real I/O (key pools, KMS
clients, the data plane through each tunnel's keeper) under timeouts, and hands each result back
to the core as an event. Actions for one tunnel run one at a time, in the order emitted, so an
Activate can never overtake the InstallKeys of the same epoch, nor an Expire a later Activate.

Every kind of tunnel answers the same calls (gateway.daemon.tunnels.Keeper): ``allocate_spi``,
``install_inbound``, ``activate_keys``, ``retire``, ``expire``; what each does is the keeper's
business (WireGuard: no SPIs, nothing to install before Activate, nothing to retire; ESP: the
kernel's SPI, the inbound SA, the outbound switch, the old inbound SA's removal).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from gateway.daemon.fetcher import FetchBatcher
from gateway.daemon.tunnels import Keeper
from gateway.kms import KeyPool, KeyPoolError, KeySource, KmsError
from gateway.protocol import (
    Action,
    Activate,
    ActivateFailed,
    Alarm,
    AllocateSpi,
    Close,
    Event,
    Expire,
    FetchQkdKeys,
    Installed,
    InstallFailed,
    InstallKeys,
    KeysDiscarded,
    KeysFetched,
    KeysFetchFailed,
    KeysTakeFailed,
    KeysTaken,
    Retire,
    SessionUp,
    SpiAllocated,
    TakeQkdKeys,
    TunnelKeys,
)
from gateway.telemetry import TelemetryBus

__all__ = ["ActionRunner"]

#: Alarms the protocol core clears itself (Alarm(active=False)); every other tunnel alarm it
#: raised is cleared by the tunnel's next activation.
_CORE_CLEARED = frozenset({"qkd_path_dropped"})
#: Discard reasons of a clean stop (ours or the peer's): expected, logged at info.
_STOP_REASONS = frozenset({"shutdown", "peer_shutdown"})

#: Actions that belong to one rekey exchange; the first one seen starts its latency clock.
_EXCHANGE = (TakeQkdKeys, FetchQkdKeys, InstallKeys)
_MAX_TRACKED = 1024

#: A take waits at most this long for the pool; the pool refills ahead of need, so waiting means
#: the KMS is slow or dry. Shorter than the protocol's rekey_timeout (30 s) so the core hears
#: "failed" and retries with new keys instead of timing the whole exchange out.
TAKE_TIMEOUT = 10.0
#: dec_keys is one HTTP request bounded by the client's own timeouts; this is the backstop.
FETCH_TIMEOUT = 15.0


class ActionRunner:
    """Runs actions in per-tunnel order. ``feed`` returns an event to the core."""

    def __init__(
        self,
        *,
        pools: dict[tuple[str, str], KeyPool],
        sources: dict[str, KeySource],
        keepers: Mapping[str, Keeper],
        bus: TelemetryBus,
        feed: Callable[[Event], None],
        activated: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._pools, self._keepers = pools, keepers
        self._fetchers = {name: FetchBatcher(source) for name, source in sources.items()}
        self._bus, self._feed, self._activated = bus, feed, activated
        self._queue: asyncio.Queue[Action] = asyncio.Queue()
        #: A lane (a deque and a task) exists only while its tunnel has actions to perform: a
        #: queue and a task kept for every tunnel's whole life were ~3.8 KB per tunnel (38 MB at
        #: 10,000 tunnels), most of them idle between rotations.
        self._lanes: dict[str, deque[Action]] = {}
        self._pending: dict[tuple[str, int], TunnelKeys] = {}
        self._tunnel_alarms: dict[str, set[str]] = {}
        self._started: dict[tuple[str, int], float] = {}  # first action of each exchange
        self._tg: asyncio.TaskGroup | None = None

    def set_sources(self, sources: dict[str, KeySource]) -> None:
        """A reload replaced KMS clients: fetch through the new ones (unchanged ones keep their
        batcher)."""
        self._fetchers = {name: self._fetchers[name] if name in self._fetchers and
                          self._fetchers[name].source is src else FetchBatcher(src)
                          for name, src in sources.items()}

    def submit(self, action: Action) -> None:
        """Called synchronously by the transport for every action the core emits: straight into
        its tunnel's lane (one task hand-off per action; a dispatcher task in between cost a
        second one), or, before :meth:`run` has started, held until it does."""
        if isinstance(action, KeysDiscarded):
            self._discarded(action)  # at once: at shutdown the lanes have stopped already
            return
        if self._tg is None:
            self._queue.put_nowait(action)
        else:
            self._dispatch(action, self._tg)

    def _discarded(self, a: KeysDiscarded) -> None:
        """QKD keys the core dropped unused: one event (counted in qkd_gateway_events_total) and
        qkd_gateway_keys_wasted_total{kms}; never key bytes or key IDs. Only the master's keys
        (``taken``) count as wasted stock: the slave logs its side of the same keys."""
        self._bus.emit("keys_discarded", level="info" if a.reason in _STOP_REASONS else "warning",
                       tunnel=a.tunnel, epoch=a.epoch, kms=a.kms, count=a.count,
                       reason=a.reason, role="master" if a.taken else "slave")
        if a.taken and self._bus.metrics is not None:
            self._bus.metrics.add_keys_wasted(a.kms, a.count)

    async def run(self) -> None:
        """Long-running task: owns the lanes, one task per tunnel, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            try:
                while not self._queue.empty():
                    self._dispatch(self._queue.get_nowait(), tg)
                self._tg = tg
                await asyncio.get_running_loop().create_future()  # the lanes do the work
            finally:
                self._tg = None  # stopping: later actions are held, never run

    def _dispatch(self, action: Action, tg: asyncio.TaskGroup) -> None:
        tunnel = getattr(action, "tunnel", None)
        if not isinstance(action, Alarm) and isinstance(tunnel, str):
            lane = self._lanes.get(tunnel)
            if lane is None:
                lane = self._lanes[tunnel] = deque()
                tg.create_task(self._lane(tunnel, lane), name=f"actions:{tunnel}")
            lane.append(action)
        else:
            self._session_action(action)

    async def _lane(self, tunnel: str, lane: deque[Action]) -> None:
        """Perform the tunnel's actions in order; end once none is left. The check that the
        lane is empty and its removal happen with no await in between, so an action submitted
        meanwhile either lands in this lane before the check or starts a new lane."""
        try:
            while lane:
                await self._perform_one(lane.popleft())
        finally:
            if self._lanes.get(tunnel) is lane:
                del self._lanes[tunnel]

    async def _perform_one(self, action: Action) -> None:
        try:
            await self._perform(action)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not kill the daemon's other tunnels
            self._bus.emit("action_failed", level="error", action=type(action).__name__,
                           tunnel=getattr(action, "tunnel", None), error=repr(exc))

    def _session_action(self, action: Action) -> None:
        if isinstance(action, Alarm):
            subject = action.tunnel or action.peer
            self._bus.alarm(action.name, action.active, peer=action.peer, tunnel=action.tunnel,
                            reason=action.reason)
            if action.tunnel is not None and action.name not in _CORE_CLEARED:
                self._tunnel_alarms.setdefault(action.tunnel, set()).add(action.name)
            if action.active:
                self._bus.emit("protocol_alarm", level="warning", alarm=action.name,
                               subject=subject, reason=action.reason)
        elif isinstance(action, SessionUp):
            self._bus.emit("peer_session_up", peer=action.peer, initiator=action.initiator)
        elif isinstance(action, Close):
            self._bus.emit("peer_connection_closed", conn=action.conn, reason=action.reason)

    async def _perform(self, action: Action) -> None:
        key = (action.tunnel, action.epoch) if isinstance(action, _EXCHANGE) else None
        if key is not None and key not in self._started:
            if len(self._started) > _MAX_TRACKED:  # abandoned exchanges must not pile up
                self._started.clear()
            self._started[key] = time.monotonic()
        if isinstance(action, TakeQkdKeys):
            await self._take(action)
        elif isinstance(action, FetchQkdKeys):
            await self._fetch(action)
        elif isinstance(action, InstallKeys):
            await self._install(action)
        elif isinstance(action, Activate):
            await self._activate(action)
        elif isinstance(action, Retire):
            self._pending.pop((action.tunnel, action.epoch), None)
            self._started.pop((action.tunnel, action.epoch), None)
            keeper = self._keepers.get(action.tunnel)
            if keeper is not None:
                try:
                    await keeper.retire(action.epoch)
                except Exception as exc:  # a leftover SA is reported by reconcile, not fatal
                    self._bus.emit("tunnel_retire_failed", level="error", tunnel=action.tunnel,
                                   epoch=action.epoch, error=str(exc))
        elif isinstance(action, Expire):
            keeper = self._keepers.get(action.tunnel)
            if keeper is not None:
                await keeper.expire(action.reason)
        elif isinstance(action, AllocateSpi):
            await self._allocate(action)

    async def _allocate(self, a: AllocateSpi) -> None:
        keeper = self._keepers.get(a.tunnel)
        if keeper is None:
            return  # the tunnel was removed meanwhile; the core's exchange times out
        try:
            spi = await keeper.allocate_spi(a.epoch)
        except Exception as exc:
            # The core has no "allocation failed" event: its exchange times out (rekey_timeout)
            # and is retried with backoff; the error is visible here.
            self._bus.emit("spi_allocation_failed", level="error", tunnel=a.tunnel,
                           epoch=a.epoch, error=str(exc))
            return
        self._feed(SpiAllocated(a.tunnel, a.epoch, spi))

    async def _install(self, a: InstallKeys) -> None:
        """The inbound side of the epoch (ESP: the inbound SA; WireGuard: nothing yet). The keys
        are held until Activate."""
        keeper = self._keepers.get(a.tunnel)
        if keeper is None:
            self._feed(InstallFailed(a.tunnel, a.epoch, "the tunnel is not running here"))
            return
        try:
            await keeper.install_inbound(a.epoch, a.keys)
        except Exception as exc:
            self._bus.emit("tunnel_install_failed", level="error", tunnel=a.tunnel,
                           epoch=a.epoch, error=str(exc))
            self._feed(InstallFailed(a.tunnel, a.epoch, str(exc)))
            return
        self._pending[(a.tunnel, a.epoch)] = a.keys
        self._feed(Installed(a.tunnel, a.epoch))

    async def _take(self, a: TakeQkdKeys) -> None:
        pool = self._pools.get((a.kms, a.slave_sae_id))
        if pool is None:
            self._feed(KeysTakeFailed(a.tunnel, a.epoch, a.kms, "no key pool for this KMS/peer"))
            return
        try:
            keys = await pool.take(a.n, timeout=TAKE_TIMEOUT)
        except (KeyPoolError, KmsError) as exc:
            self._feed(KeysTakeFailed(a.tunnel, a.epoch, a.kms, str(exc)))
            return
        self._feed(KeysTaken(a.tunnel, a.epoch, a.kms, tuple(keys)))

    async def _fetch(self, a: FetchQkdKeys) -> None:
        fetcher = self._fetchers.get(a.kms)
        if fetcher is None:
            self._feed(KeysFetchFailed(a.tunnel, a.epoch, a.kms, "KMS not configured here"))
            return
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                keys = await fetcher.fetch(a.master_sae_id, a.key_ids)
        except TimeoutError:
            self._feed(KeysFetchFailed(a.tunnel, a.epoch, a.kms, "KMS did not answer in time"))
            return
        except KmsError as exc:
            self._feed(KeysFetchFailed(a.tunnel, a.epoch, a.kms, str(exc)))
            return
        self._feed(KeysFetched(a.tunnel, a.epoch, a.kms, tuple(keys)))

    async def _activate(self, a: Activate) -> None:
        keys = self._pending.pop((a.tunnel, a.epoch), None)
        keeper = self._keepers.get(a.tunnel)
        if keys is None or keeper is None:
            # The core must not believe a key is in use that the data plane never got: it
            # reverts, tells the peer and rekeys (a tunnel removed meanwhile is simply gone).
            self._bus.emit("activate_without_keys", level="error", tunnel=a.tunnel, epoch=a.epoch)
            self._feed(ActivateFailed(a.tunnel, a.epoch, "no keys or no keeper for this epoch"))
            return
        for (tunnel, epoch) in [k for k in self._pending if k[0] == a.tunnel and k[1] < a.epoch]:
            del self._pending[(tunnel, epoch)]
        started = self._started.pop((a.tunnel, a.epoch), None)
        duration = None if started is None else time.monotonic() - started
        try:
            await keeper.activate_keys(a.epoch, keys, duration)
        except Exception as exc:
            # The keeper has put the previous key back (or failed closed); the tunnel stays on a
            # known key and the failure is visible. The next scheduled rekey tries again.
            self._bus.emit("tunnel_activate_failed", level="error", tunnel=a.tunnel,
                           epoch=a.epoch, error=str(exc))
            if self._bus.metrics is not None:
                self._bus.metrics.rekey(a.tunnel, "failed", duration)
            # The core reverts to the previous epoch, tells the peer and rekeys.
            self._feed(ActivateFailed(a.tunnel, a.epoch, str(exc)))
            return
        if self._bus.metrics is not None:
            self._bus.metrics.rekey(a.tunnel, "ok", duration)
        for name in self._tunnel_alarms.pop(a.tunnel, set()):
            self._bus.alarm(name, False, tunnel=a.tunnel)
        if self._activated is not None:
            await self._activated(a.tunnel)
