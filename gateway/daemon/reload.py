"""Live reload: what changed between the running configuration and a new one, and applying it.

``systemctl reload`` (SIGHUP) re-reads the file. An invalid file changes nothing (the daemon keeps
running the old configuration and says why). A valid one is applied as a difference: unchanged
tunnels keep their keys, epochs and timers untouched; added tunnels come up; removed ones go down
cleanly; a changed one is rekeyed under its new settings. Some settings cannot change under a
running daemon (its identity, state directory, control socket, listener, telemetry sinks): a file
that changes them is refused as a whole, with the list, never applied in part.

:func:`diff_configs` computes the difference (pure); :class:`ConfigReloader` applies it to a
running :class:`~gateway.daemon.app.Daemon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, GatewayConfig, Tunnel, load_config
from gateway.daemon.build import build_kms, build_peers, build_pools
from gateway.protocol import PolicyError, validate_peers
from gateway.telemetry import configure_logging

if TYPE_CHECKING:
    from gateway.daemon.app import Daemon

__all__ = ["ConfigDiff", "ConfigReloader", "diff_configs"]

ALARM_INVALID = "config_invalid"

#: Top-level settings a running daemon cannot take over; changing them needs a restart.
_RESTART_ONLY = ("site", "state_dir", "control_socket", "listen")


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    restart_needed: tuple[str, ...]  # settings that differ but cannot be applied live
    log_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.log_changed)


def _tunnel_inputs(cfg: GatewayConfig, t: Tunnel) -> tuple[object, ...]:
    """Everything a tunnel's keys and data plane depend on: itself, its peer, its KMS entries,
    and (hub) the other tunnels on its interface."""
    peer = next((p for p in cfg.peers if p.name == t.peer), None)
    kms = tuple(next((k for k in cfg.kms if k.name == name), None) for name in t.kms)
    siblings = tuple(o for o in cfg.tunnels if o.interface == t.interface and o.name != t.name
                     and o.kind == "wireguard" == t.kind)
    return t, peer, kms, tuple(s.wireguard for s in siblings)


def diff_configs(old: GatewayConfig, new: GatewayConfig) -> ConfigDiff:
    restart = [key for key in _RESTART_ONLY if getattr(old, key) != getattr(new, key)]
    for key in ("mqtt", "metrics"):
        if getattr(old.telemetry, key) != getattr(new.telemetry, key):
            restart.append(f"telemetry.{key}")
    before = {t.name: t for t in old.tunnels}
    after = {t.name: t for t in new.tunnels}
    added = tuple(n for n in after if n not in before)
    removed = tuple(n for n in before if n not in after)
    changed: list[str] = []
    unchanged: list[str] = []
    for name in after:
        if name in before:
            same = _tunnel_inputs(old, before[name]) == _tunnel_inputs(new, after[name])
            (unchanged if same else changed).append(name)
    return ConfigDiff(added, removed, tuple(changed), tuple(unchanged), tuple(restart),
                      old.telemetry.log != new.telemetry.log)


class ConfigReloader:
    """Applies a new configuration file to a running daemon (one reload at a time)."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon
        self.generation = 1
        self.loaded_at = time.time()
        self._lock = asyncio.Lock()

    def info(self) -> dict[str, Any]:
        path = self._d.config_path
        return {"path": None if path is None else str(path), "generation": self.generation,
                "loaded_at": round(self.loaded_at, 3)}

    async def reload(self) -> dict[str, Any]:
        async with self._lock:
            d = self._d
            d.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                return await self._reload()
            finally:
                d.notifier.ready(f"configuration generation {self.generation}")

    def _refuse(self, errors: list[str]) -> dict[str, Any]:
        d = self._d
        d.bus.emit("config_reload_failed", level="error", path=str(d.config_path),
                   errors=errors, generation=self.generation)
        d.bus.alarm(ALARM_INVALID, True, reason=errors[0])
        return {"applied": False, "errors": errors, "generation": self.generation}

    async def _reload(self) -> dict[str, Any]:
        d = self._d
        if d.config_path is None:
            return self._refuse(["the daemon was not started from a configuration file"])
        try:
            new = await asyncio.to_thread(load_config, d.config_path)
        except ConfigError as exc:
            return self._refuse([str(p) for p in exc.problems])
        except OSError as exc:
            return self._refuse([f"{d.config_path}: {exc.strerror}"])
        diff = diff_configs(d.cfg, new)
        if diff.restart_needed:
            return self._refuse([f"{key}: changed; this cannot be applied to a running daemon, "
                                 "restart it (systemctl restart qkd-gateway)"
                                 for key in diff.restart_needed])
        peers, addresses = build_peers(new)
        try:
            validate_peers(d.node.sae_id, peers)
        except PolicyError as exc:
            return self._refuse([str(exc)])
        # Everything an added tunnel needs exists before the protocol core learns of it: the
        # peer may open the session and finish the first exchange at once, and its keys must
        # find their pool, its Activate its keeper. Removed tunnels go first (an Activate that
        # still arrives for one finds no keeper and is refused back to the core).
        await self._swap_kms(new)
        for name in diff.removed:
            d.forget_status(name)
            await d.tunnels.remove(name)
            d.bus.tunnel_removed(name)
        kinds = {t.name: t.kind for t in new.tunnels}
        for name in diff.changed:
            if d.tunnels.configs[name].kind != kinds[name]:
                # Another data plane (wireguard <-> xfrm): the old one goes down cleanly, the
                # new one comes up below (closed until the rekey that follows).
                await d.tunnels.remove(name)
        created = d.tunnels.build(new.tunnels)
        for iface in d.tunnels.take_dirty():
            await iface.reconcile()
        for name in created:
            await d.keepers[name].start()
        d.cfg = new
        d.endpoint.reconfigure(peers, addresses)
        for name in created:  # no await since reconfigure: nothing ran in between
            d.attach_tunnel(name)
        for name in diff.changed:
            d.schedule(name)
            with contextlib.suppress(ValueError):  # no session yet: it rekeys when it is back
                d.endpoint.rekey_now(name)
        if diff.log_changed:
            configure_logging(new.telemetry.log.format, new.telemetry.log.level)
        self.generation += 1
        self.loaded_at = time.time()
        d.bus.alarm(ALARM_INVALID, False)
        fields: dict[str, Any] = {"added": list(diff.added), "removed": list(diff.removed),
                                  "changed": list(diff.changed),
                                  "unchanged": list(diff.unchanged)}
        d.bus.emit("config_reloaded", generation=self.generation, **fields)
        return {"applied": True, "generation": self.generation, **fields}

    async def _swap_kms(self, new: GatewayConfig) -> None:
        """KMS clients and key pools of new or changed KMS entries are rebuilt; unchanged ones
        (and the keys their pools hold) are kept; those no tunnel uses any more are closed."""
        d = self._d
        old_kms = {k.name: k for k in d.cfg.kms}
        new_kms = {k.name: k for k in new.kms}
        fresh = build_kms(new)
        for name, src in fresh.items():
            if name in d.sources and old_kms.get(name) == new_kms[name]:
                await src.aclose()
                fresh[name] = d.sources[name]
        for name, src in list(d.sources.items()):
            if fresh.get(name) is not src:
                await src.aclose()
        pools = build_pools(new, fresh)
        for key, pool in list(pools.items()):
            old = d.pools.get(key)
            if old is not None and fresh[key[0]] is d.sources.get(key[0]):
                pools[key] = old
            else:
                await pool.start()
        for key, pool in list(d.pools.items()):
            if pools.get(key) is not pool:
                await pool.aclose()
        d.sources.clear()
        d.sources.update(fresh)
        d.pools.clear()
        d.pools.update(pools)
        d.runner.set_sources(fresh)
