"""Live reload: what changed between the running configuration and a new, valid one.

``systemctl reload`` (SIGHUP) re-reads the file. An invalid file changes nothing (the daemon keeps
running the old configuration and says why). A valid one is applied as a difference: unchanged
tunnels keep their keys, epochs and timers untouched; added tunnels come up; removed ones go down
cleanly; a changed one is rekeyed under its new settings. Some settings cannot change under a
running daemon (its identity, state directory, control socket, listener, telemetry sinks): a file
that changes them is refused as a whole, with the list, never applied in part.

This module only computes the difference (pure, no I/O); gateway.daemon.app applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig, Tunnel

__all__ = ["ConfigDiff", "diff_configs"]

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
