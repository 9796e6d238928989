"""`qkd-gateway failsafe --config FILE`: fail expired tunnels closed while no daemon runs.

Run by systemd/qkd-gateway-failsafe.timer while the daemon is down (see gateway.daemon.failsafe).
Exit codes: 0 done (or a daemon runs and owns the tunnels); 1 a tunnel could not be closed;
2 the configuration is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_config
from gateway.telemetry import configure_logging

__all__ = ["register", "run"]


def _horizon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "failsafe", help="fail closed every tunnel whose key expires soon (daemon not running)",
        description="For every tunnel whose state shows no key valid for HORIZON more seconds, "
        "write a random WireGuard PSK and end the session, or delete the ESP SAs (the XFRM "
        "policies stay, so nothing leaves in clear). Does nothing while a daemon runs. "
        "systemd runs it from qkd-gateway-failsafe.timer while the daemon is down.",
    )
    p.add_argument("--config", "-c", type=Path, required=True, metavar="FILE",
                   help="the daemon's YAML configuration")
    p.add_argument("--horizon", type=_horizon, default=None, metavar="SECONDS",
                   help="close keys that expire within this many seconds (default 15)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.daemon.failsafe import DEFAULT_HORIZON, run_failsafe

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: configuration is invalid:", file=sys.stderr)
        print(str(exc), file=sys.stderr)
        return 2
    configure_logging(cfg.telemetry.log.format, cfg.telemetry.log.level)
    horizon = DEFAULT_HORIZON if args.horizon is None else args.horizon
    return asyncio.run(run_failsafe(cfg, horizon))
