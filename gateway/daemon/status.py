"""What `qkd-gateway status` shows: every tunnel's key state, keys installed vs in use, KMS
stock, pools and alarms. Nothing secret: epochs, key IDs, ages and counts, never keys."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from gateway import __version__

if TYPE_CHECKING:
    from gateway.daemon.app import Daemon

__all__ = ["daemon_status"]


def daemon_status(d: Daemon) -> dict[str, Any]:
    tunnels = {}
    now = time.monotonic()
    for name, keeper in d.keepers.items():
        t = d.node.tunnel_status(name)
        cfg = d.tunnels.configs[name]
        slave = d.cfg.peer(cfg.peer).sae_id
        due = d.rekey_due.get(name)
        hs = d.tunnels.handshakes.get(name)
        tunnels[name] = {
            **keeper.status(),
            "peer": t.peer,
            "mode": t.mode,
            "dataplane": keeper.kind,
            "interface": cfg.interface,
            "kms": list(cfg.kms),
            "kms_stock": {k: d.pools[(k, slave)].stored_key_count for k in cfg.kms},
            "rekeys_completed": t.rekeys_completed,
            "next_rekey_s": None if due is None or keeper.closed else round(due - now, 1),
            "session_up": t.session_up,
            "low_stock": d.low_stock.get(name, False),
        }
        if hs is not None:
            # WireGuard uses a PSK from its next handshake on: keys installed (above) are not
            # keys in use; these are the handshakes seen and the PSK the last one mixed in.
            # (ESP: keeper.status()["esp"]; its outbound SA is in use from its activation.)
            tunnels[name]["wg"] = hs.status(time.time())
    return {
        "site": d.cfg.site.name,
        "version": __version__,
        "uptime_s": round(time.time() - d.started, 1),
        "config": d.reloader.info(),
        "tunnels": tunnels,
        "pools": {f"{k}->{s}": dataclasses.asdict(p.stats()) for (k, s), p in d.pools.items()},
        "alarms": d.bus.active_alarms,
    }
