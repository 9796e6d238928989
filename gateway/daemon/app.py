"""The daemon: one asyncio TaskGroup running everything a site gateway does.

Named tasks (visible in ``qkd-gateway status`` and in tracebacks):

* ``actions`` and ``actions:<tunnel>`` - perform what the protocol core asks (keys, installs);
                                         a tunnel's lane exists while it has actions
* ``keeper-deadlines``                 - every keeper's ``reject_after`` deadline and fail-closed
                                         retries (gateway.daemon.deadlines); ``keeper:<tunnel>``
                                         only while one fails closed
* ``state-commit``                     - the state directory's group commit (gateway.daemon.commit)
* ``xfrm-events``                      - the kernel's SA expiries for XFRM tunnels (when any)
* ``reconcile``                        - restore tunnels changed behind the daemon's back
* ``telemetry:pools``                  - key pool levels and KMS stock into metrics
* ``mqtt``, ``metrics``                - telemetry sinks, when configured
* ``watchdog``                         - systemd WATCHDOG=1 pings, when asked for
The protocol endpoint (TCP listener, dialers, timer) runs its own tasks on the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import structlog

from gateway import __version__
from gateway.config import GatewayConfig, Tunnel
from gateway.daemon.actions import ActionRunner
from gateway.daemon.build import build_kms, build_peers, build_pools, load_identity
from gateway.daemon.control import ControlServer
from gateway.daemon.periodic import observe_handshake, observe_handshakes, reconcile_loop
from gateway.daemon.reload import ConfigReloader
from gateway.daemon.schedule import (
    align_to_handshake,
    brought_forward,
    coalesce,
    plan_rotation,
)
from gateway.daemon.startup import settle_memory, start_in_batches
from gateway.daemon.state import StateError, StateLock, StateStore, UsedKeyIdsSaver
from gateway.daemon.status import daemon_status
from gateway.daemon.tunnels import TunnelSet
from gateway.protocol import Endpoint, Node, Timers
from gateway.telemetry import (
    GatewayMetrics,
    MetricsServer,
    MqttPublisher,
    MqttSettings,
    SdNotifier,
    TelemetryBus,
    watchdog_interval,
)

__all__ = ["Daemon", "timers_for"]

log = structlog.get_logger("gateway.daemon")

#: Pool levels and KMS stock are exported this often.
POOL_METRICS_INTERVAL = 5.0
#: Up to this many peers on a tunnel's interface, its handshake time is read at every activation
#: (one UAPI/netlink dump of the interface); a bigger hub relies on the reconciliation pass.
HANDSHAKE_LOOK_MAX_PEERS = 64
#: A starting daemon waits this long for ``qkd-gateway failsafe`` (which holds the state lock for
#: well under a second) before it concludes that another daemon owns the state directory.
LOCK_WAIT = 5.0
#: A tunnel that starts closed with an epoch recorded continues this far above it. Its state
#: file is written by the committer shortly after an activation (gateway.daemon.commit), so a
#: daemon killed in between activated an epoch its file does not show; if the peer lost it too
#: (both killed at once), both would otherwise number the next exchange as that one again. An
#: epoch names one exchange (its key is fresh either way); the gap covers any activations one
#: commit window can hold (a rekey takes a round trip and a KMS request; rotation is >= 1 s).
EPOCH_SKIP_AFTER_CLOSED_START = 64


def timers_for(cfg: GatewayConfig) -> Timers:
    """Protocol timers from the tunnels' configured intervals (the shortest one governs)."""
    if not cfg.tunnels:
        return Timers()
    rekey = min(t.rekey_interval for t in cfg.tunnels)
    reject = min(t.reject_after for t in cfg.tunnels)
    # The backup side steps in after 1/12 of the interval (10 s of 120 s, as Rosenpass).
    return dataclasses.replace(
        Timers(), rekey_after=rekey, rekey_after_backup=rekey * 13 / 12, reject_after=reject
    )


class Daemon:
    def __init__(self, cfg: GatewayConfig, *, timers: Timers | None = None,
                 config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.timers = timers or timers_for(cfg)
        self.started = time.time()
        self.metrics = GatewayMetrics()
        self.mqtt: MqttPublisher | None = None
        m = cfg.telemetry.mqtt
        if m is not None:
            self.mqtt = MqttPublisher(
                MqttSettings.from_url(
                    m.url, cfg.site.name, topic_prefix=m.topic_prefix, tls_ca=m.ca_file,
                    tls_cert=m.client_cert,
                    tls_key=m.client_key.path if m.client_key is not None else None,
                    keepalive_s=m.keepalive),
                self.metrics)
        self.bus = TelemetryBus(self.metrics, self.mqtt)
        self.store = StateStore(cfg.state_dir)
        self.lock = StateLock(cfg.state_dir)
        self.identity = load_identity(cfg)
        peers, self._addresses = build_peers(cfg)
        self.node = Node(self.identity, cfg.site.sae_id, peers, timers=self.timers)
        self.sources = build_kms(cfg)
        self.pools = build_pools(cfg, self.sources)
        self.tunnels = TunnelSet(self.store, self._keeper_event, self.bus.alarm,
                                 rekey=self._rekey_now)
        self.tunnels.build(cfg.tunnels)
        self.keepers = self.tunnels.keepers
        self.runner = ActionRunner(pools=self.pools, sources=self.sources, keepers=self.keepers,
                                   bus=self.bus, feed=self._feed, activated=self._activated)
        self.low_stock: dict[str, bool] = {}
        self.rekey_due: dict[str, float] = {}
        self._wall_due: dict[str, float | None] = {}
        self._status_stamps: dict[str, tuple[Any, ...]] = {}  # per tunnel, at its last publish
        self.used_key_ids = UsedKeyIdsSaver(
            self.store, self.node.export_used_key_ids,
            lambda: self.node.used_key_ids_generation,
            functools.partial(self._state_saved, what="used_key_ids"))
        self.endpoint = Endpoint(self.node, self.runner.submit, peers=self._addresses)
        self.control = ControlServer(cfg.control_socket, self._control)
        self.notifier = SdNotifier()
        self.reloader = ConfigReloader(self)
        self._tg: asyncio.TaskGroup | None = None

    def _keeper_event(self, event: str, **fields: Any) -> None:
        self.bus.emit(event, **fields)
        if event in ("tunnel_failed_closed", "tunnel_resumed") and fields.get("tunnel") in \
                self._wall_due and fields["tunnel"] in self.keepers:
            self.publish_status(fields["tunnel"])

    def _status_stamp(self, name: str) -> tuple[Any, ...]:
        """Every input of :meth:`publish_status` but the volatile ones (ages, ``kms_stock``),
        as one cheap comparable value."""
        core, hs = self.node.tunnels[name], self.tunnels.handshakes.get(name)
        return (self.keepers[name].status_stamp(), core.enabled_at is not None, core.policy,
                core.peer, self._wall_due.get(name), self.low_stock.get(name, False),
                hs.stamp() if hs is not None else None)

    def refresh_status(self, name: str, stocks: dict[tuple[str, ...], int | None]) -> None:
        """The reconciliation sweep's look at one tunnel: its status is published again only
        if an input changed since its last publish (what changes without an event: the session,
        a handshake seen); otherwise only the ``kms_stock`` gauge follows the KMS. ``stocks``:
        the pass's answers of :meth:`_stock` by (peer, KMS paths), shared by its tunnels."""
        if self._status_stamps.get(name) != self._status_stamp(name):
            self.publish_status(name)
            return
        t = self.tunnels.configs[name]
        key = (t.peer, *t.kms)
        if key not in stocks:
            stocks[key] = self._stock(t)[0]
        self.metrics.tunnel_status(name, {"kms_stock": stocks[key]})

    def forget_status(self, name: str) -> None:
        """A tunnel leaves the configuration: its schedule and status inputs go (before its
        keeper does: the fail-closed of a removal publishes nothing for it)."""
        for table in (self.rekey_due, self._wall_due, self.low_stock, self._status_stamps):
            table.pop(name, None)

    def publish_status(self, name: str) -> None:
        """The tunnel's retained MQTT status and gauges (published only when it changed)."""
        stamp = self._status_stamp(name)
        keeper, t = self.keepers[name], self.node.tunnel_status(name)
        st = keeper.status()
        stock, _low = self._stock(self.tunnels.configs[name])
        hs = self.tunnels.handshakes.get(name)
        if hs is not None:
            # Installed is not in use: WireGuard mixes a PSK in at its next handshake only.
            in_use = {k: v for k, v in hs.status(time.time()).items()
                      if k in ("psk_in_use_epoch", "handshakes", "fresh_handshakes")}
        else:
            # ESP: the outbound SA is the key in use, from its activation on.
            in_use = {"key_in_use_epoch": st.get("esp", {}).get("key_in_use_epoch")}
        self.bus.tunnel_status(name, {
            "state": "failed_closed" if st["closed"] else "up",
            "epoch": st["epoch"], "policy": t.mode, "achieved": st["achieved"],
            "peer": t.peer, "session_up": t.session_up,
            "activated_at": st["activated_at"],
            "next_rekey_at": None if st["closed"] else self._wall_due.get(name),
            "kms_stock": stock, "low_stock": self.low_stock.get(name, False),
            "key_age_s": st["key_age_s"], "keys_installed": st["keys_installed"],
            "dataplane": keeper.kind, **in_use,
        })
        self._status_stamps[name] = stamp

    def _feed(self, event: Any) -> None:
        self.endpoint.handle(event)

    def _stock(self, tunnel: Tunnel) -> tuple[int | None, int]:
        """The lowest stored_key_count over the tunnel's KMS paths, with that KMS's low_stock."""
        slave = self.cfg.peer(tunnel.peer).sae_id
        worst: tuple[int | None, int] = (None, 0)
        for name in tunnel.kms:
            count = self.pools[(name, slave)].stored_key_count
            low = self.cfg.kms_named(name).low_stock
            if count is not None and (worst[0] is None or count - low < worst[0] - worst[1]):
                worst = (count, low)
        return worst

    async def _activated(self, name: str) -> None:
        """After each activation: note the new PSK for the keys-in-use figures, look at the
        tunnel's last WireGuard handshake (cheap on a small interface; a big hub's is looked at
        by the reconciliation pass instead), and schedule the next rotation."""
        inst = self.tunnels.installers.get(name)
        if inst is not None:  # WireGuard (an ESP key is in use from its activation)
            self.tunnels.handshakes[name].activated(self.keepers[name].epoch, time.time())
            if len(inst.interface.spec.peers) <= HANDSHAKE_LOOK_MAX_PEERS:
                with contextlib.suppress(Exception):
                    await observe_handshake(self, name)
        self.schedule(name)
        self.used_key_ids.moved()

    def _rekey_now(self, name: str, why: str) -> None:
        """A data plane asks for new keys at once (ESP: a soft lifetime, a lost SA)."""
        try:
            self.endpoint.rekey_now(name)
        except ValueError as exc:  # no session: the tunnel rekeys when the peer is back
            self.bus.emit("rekey_deferred", tunnel=name, reason=why, error=str(exc))
            return
        self.bus.emit("rekey_requested", tunnel=name, by=why)

    def schedule(self, name: str) -> None:
        """The next rotation's interval (jittered; stretched while the KMS runs low on keys,
        see gateway.daemon.schedule; for WireGuard brought forward to just before the next
        natural handshake) goes to the protocol core."""
        t = self.tunnels.configs[name]
        core = self.node.tunnels[name]
        stock, low_water = self._stock(t)
        # Only the preferred side jitters: the backup's 13/12 must stay after it (see
        # plan_rotation), else the two collide and a QKD key is wasted.
        plan = plan_rotation(t.rekey_interval, t.reject_after, stock, low_water,
                             jitter=core.preferred, first=core.completed == 1)
        if t.kind == "wireguard" and not plan.low_stock:
            plan = brought_forward(plan, align_to_handshake(
                plan.delay, self.tunnels.handshakes[name].last_handshake, time.time()))
        # The core counts the interval from its activation time (its clock is the loop's, the
        # monotonic clock): the grid point is placed on that timeline.
        now = time.monotonic()
        start = core.active_at if core.active_at is not None else now
        delay = coalesce(start, plan.delay, plan.earliest, plan.latest)
        self.node.set_tunnel_timers(name, delay, t.reject_after)
        self.rekey_due[name] = start + delay
        self._wall_due[name] = time.time() + (start + delay - now)
        if plan.low_stock != self.low_stock.get(name, False):
            self.low_stock[name] = plan.low_stock
            self.bus.alarm("kms_low_stock", plan.low_stock, tunnel=name, stored_key_count=stock,
                           low_stock=low_water, next_rekey_s=round(start + delay - now, 1))
        self.publish_status(name)

    # -- run ----------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then leave tunnels per their ``on_shutdown``."""
        self.store.prepare()
        await self._lock()
        self.store.start(self._state_saved)
        self.bus.emit("daemon_starting", version=__version__, site=self.cfg.site.name,
                      tunnels=[t.name for t in self.cfg.tunnels],
                      backends={k: b.kind for k, b in self.tunnels.backends.items()})
        self.node.restore_used_key_ids(self.store.load_used_key_ids())
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self.mqtt is not None:
                    tg.create_task(self.mqtt.run(), name="mqtt")
                if self.cfg.telemetry.metrics is not None:
                    listen = self.cfg.telemetry.metrics.listen
                    server = MetricsServer(self.metrics.registry, listen.host, listen.port)
                    tg.create_task(server.run(), name="metrics")
                for pool in self.pools.values():
                    await pool.start()
                await start_in_batches(self.store, list(self.keepers), self._start_keeper,
                                       self.attach_tunnel,
                                       functools.partial(self._state_saved, what="tunnels"))
                settle_memory()
                tg.create_task(self.runner.run(), name="actions")
                tg.create_task(reconcile_loop(self), name="reconcile")
                tg.create_task(self._pool_metrics_loop(), name="telemetry:pools")
                wd = watchdog_interval()
                if wd is not None:
                    tg.create_task(self._watchdog(wd), name="watchdog")
                await self.control.start()
                port = await self.endpoint.listen(str(self.cfg.listen.address),
                                                  self.cfg.listen.port)
                for addr in self._addresses:
                    self.endpoint.dial(addr)
                self.notifier.ready(f"listening on port {port}")
                self.bus.emit("daemon_ready", port=port)
                await stop.wait()
                # A clean stop: start no exchange, tell the peers, and let the exchanges in
                # flight finish (at most timers.shutdown_drain) while the action lanes run.
                await self.endpoint.drain()
                raise _Stopping
        except* _Stopping:
            pass
        finally:
            await self._shutdown()

    async def start_tunnel(self, name: str) -> None:
        """Bring one tunnel up: its keeper resumes or starts closed; the protocol core learns
        its last epoch (and, when resumed, that epoch's age, so the next rekey follows the
        schedule instead of starting at once)."""
        await self._start_keeper(name)
        self.attach_tunnel(name)

    async def _start_keeper(self, name: str) -> None:
        await self.keepers[name].start()

    def attach_tunnel(self, name: str) -> None:
        """The synchronous half of :meth:`start_tunnel`: tell the protocol core the started
        keeper's epoch, schedule it and watch its deadline. A live reload starts the keepers of
        added tunnels first, then reconfigures the core and attaches them with no await in
        between, so no exchange can activate a key before its keeper exists."""
        assert self._tg is not None
        keeper = self.keepers[name]
        activated = keeper.activated
        if activated is not None:
            age = keeper.clock_now() - activated
            self.node.restore_epoch(name, keeper.epoch, age=age,
                                    now=asyncio.get_running_loop().time())
        else:
            self.node.restore_epoch(name, keeper.epoch + EPOCH_SKIP_AFTER_CLOSED_START
                                    if keeper.epoch else 0)
        self.schedule(name)
        self.tunnels.watch(self._tg, name)

    def _state_saved(self, exc: OSError | None, what: str = "state_dir") -> None:
        """A state write failed (``what``: a batch of the store's committer, until one succeeds
        saves are refused and activations fail as ``tunnel_activate_failed``; the start-up's;
        the used-key-ID memory), or (None) the committer can write again."""
        if exc is None:
            self.bus.emit("state_save_recovered", what=what)
        else:
            self.bus.emit("state_save_failed", level="error", what=what, error=str(exc),
                          pending=self.store.commit.pending)

    def request_reload(self) -> None:
        """SIGHUP: re-read the configuration file and apply the difference."""
        if self._tg is not None:
            self._tg.create_task(self.reloader.reload(), name="reload")

    async def _lock(self) -> None:
        deadline = time.monotonic() + LOCK_WAIT
        while not self.lock.try_acquire():
            if time.monotonic() > deadline:
                raise StateError(
                    f"{self.lock.path} is locked: another qkd-gateway daemon uses state_dir "
                    f"{self.cfg.state_dir}; stop it first, or give this one its own state_dir")
            await asyncio.sleep(0.1)

    async def _shutdown(self) -> None:
        self.notifier.stopping("shutting down")
        self.bus.emit("daemon_stopping")
        with contextlib.suppress(Exception):
            await self.endpoint.aclose()
        await self.control.close()
        for t in self.cfg.tunnels:
            teardown = t.on_shutdown == "teardown"
            try:
                await self.keepers[t.name].close(teardown)
            except Exception as exc:
                self.bus.emit("tunnel_close_failed", level="error", tunnel=t.name, error=str(exc))
        for (kms, _slave), pool in self.pools.items():
            await pool.aclose()
            wasted = pool.stats().wasted
            if wasted:
                self.metrics.add_keys_wasted(kms, wasted)
        for source in self.sources.values():
            await source.aclose()
        self.used_key_ids.save()  # what moved since its last save
        try:
            await self.store.close()  # every pending state write, before the lock goes
        except OSError as exc:  # each file is old or new: a restart starts those tunnels closed
            self._state_saved(exc)
        self.bus.emit("daemon_stopped", keys_wasted=sum(p.stats().wasted
                                                         for p in self.pools.values()))
        self.lock.release()

    # -- periodic tasks -----------------------------------------------------------------------
    async def _pool_metrics_loop(self) -> None:
        while True:
            for (kms, _slave), pool in self.pools.items():
                self.metrics.set_key_pool(kms, pool.size)
            await asyncio.sleep(POOL_METRICS_INTERVAL)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)

    # -- control socket -----------------------------------------------------------------------
    async def _control(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "status":
            with contextlib.suppress(Exception):  # status must answer even if a peer is gone
                await observe_handshakes(self)
            return {"ok": True, **daemon_status(self)}
        if cmd == "rekey":
            tunnel = req.get("tunnel")
            if not isinstance(tunnel, str):
                return {"ok": False, "error": "rekey needs a tunnel name"}
            try:
                self.endpoint.rekey_now(tunnel)
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            self.bus.emit("rekey_requested", tunnel=tunnel, by="control socket")
            return {"ok": True, "tunnel": tunnel, "epoch": self.keepers[tunnel].epoch}
        if cmd == "reload":
            return {"ok": True, **await self.reloader.reload()}
        return {"ok": False, "error": f"unknown command {cmd!r}; try status, rekey or reload"}

    def status(self) -> dict[str, Any]:
        return daemon_status(self)


class _Stopping(Exception):
    """Raised inside the TaskGroup to cancel every task on a stop request."""
