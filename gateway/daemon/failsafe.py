"""Fail closed while the daemon does not run: ``qkd-gateway failsafe``.

``reject_after`` must hold whether or not the daemon runs. A running daemon enforces it itself
(gateway.daemon.keeper). When it is stopped with ``on_shutdown: keep``, has crashed, or sits in
systemd's start-limit, nobody would: WireGuard has no lifetime for a PSK. So a systemd timer
(systemd/qkd-gateway-failsafe.timer) runs this every few seconds while the daemon is down: for
every configured tunnel whose state shows no key valid for at least ``horizon`` more seconds, it
writes a random PSK and ends the WireGuard session (the same step as the daemon's fail-closed,
with the same fallback of taking the interface down), and marks the state closed. For an XFRM
tunnel it deletes the tunnel's SAs (ours by reqid, nothing else) and leaves the policies as they
are: where they exist, matching packets are then dropped; a tunnel torn down on purpose is not
re-created. (The SAs' hard lifetime, when configured, is the kernel's own backstop.)

``horizon`` (default 15 s) is longer than the timer's period (10 s), so a key is removed before
``reject_after``, never after: with the daemon down no new key can come anyway.

It acts only while it can take the state directory's lock: a running daemon holds it, and a
daemon that starts meanwhile waits for this to finish (gateway.daemon.app.LOCK_WAIT).
"""

from __future__ import annotations

from typing import Any

import structlog

from gateway.config import GatewayConfig
from gateway.daemon.build import BuildError, esp_reqids, esp_spec, wireguard_plans
from gateway.daemon.esp_keeper import EspKeeper
from gateway.daemon.keeper import FailClosedError, TunnelKeeper
from gateway.daemon.lifetime import KeyLifetime
from gateway.daemon.state import StateError, StateLock, StateStore
from gateway.daemon.wg_installer import WgInterface, WireGuardInstaller
from gateway.dataplane import DataplaneError, select_backend
from gateway.dataplane.xfrm import EspTunnel

__all__ = ["DEFAULT_HORIZON", "run_failsafe"]

log = structlog.get_logger("gateway.failsafe")

#: Longer than the timer's period (10 s) plus its accuracy (1 s), so no key outlives reject_after.
DEFAULT_HORIZON = 15.0


def _emit(event: str, level: str = "info", **fields: Any) -> None:
    getattr(log, level)(event, **fields)


def _alarm(name: str, active: bool, **fields: Any) -> None:
    # No MQTT here: the alarm is a log line; the daemon raises its own alarm when it starts.
    log.warning("alarm_raised" if active else "alarm_cleared", alarm=name, **fields)


async def run_failsafe(cfg: GatewayConfig, horizon: float = DEFAULT_HORIZON) -> int:
    """0: done (or a daemon runs); 1: a tunnel could not be closed."""
    store = StateStore(cfg.state_dir)
    store.prepare()
    lock = StateLock(cfg.state_dir)
    if not lock.try_acquire():
        log.info("failsafe_skipped", reason="a daemon holds the state directory's lock")
        return 0
    failed = 0
    try:
        plans = wireguard_plans(cfg.tunnels)
        reqids = esp_reqids(cfg.tunnels)
        specs = {t.name: esp_spec(t, reqids[t.name]) for t in cfg.tunnels if t.kind == "xfrm"}
    except BuildError as exc:
        lock.release()
        log.error("failsafe_failed", error=str(exc))
        return 1
    try:
        for t in cfg.tunnels:
            esp: EspTunnel | None = None
            try:
                keeper: KeyLifetime
                if t.kind == "xfrm":
                    esp = EspTunnel(specs[t.name])
                    keeper = EspKeeper(t.name, t.reject_after, esp, store, _emit, _alarm)
                else:
                    plan = plans[t.name]
                    backend = select_backend(plan.backend)  # type: ignore[arg-type]
                    installer = WireGuardInstaller(WgInterface(backend, plan.spec),
                                                   plan.peer_public_key)
                    keeper = TunnelKeeper(t.name, t.reject_after, installer, store, _emit,
                                          _alarm)
                why = await keeper.failsafe(horizon)
            except (FailClosedError, DataplaneError, StateError) as exc:
                failed += 1
                log.error("failsafe_failed", tunnel=t.name, error=str(exc))
                continue
            finally:
                if esp is not None:
                    esp.close()
            if why is not None:
                log.warning("failsafe_closed", tunnel=t.name, reason=why)
    finally:
        lock.release()
    return 1 if failed else 0
