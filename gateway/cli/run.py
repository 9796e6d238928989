"""`qkd-gateway run --config FILE`: the daemon (systemd runs this; see systemd/)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, load_config
from gateway.daemon.build import BuildError
from gateway.daemon.state import StateError
from gateway.dataplane import DataplaneError
from gateway.identity import IdentityError
from gateway.kms import KmsError
from gateway.telemetry import TelemetryError, configure_logging

__all__ = ["register", "run"]

EXIT_CONFIG = 2
EXIT_STARTUP = 1


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run the gateway daemon",
        description="Run the gateway: peer sessions, QKD key pools, tunnel rotation. Stops "
        "cleanly on SIGTERM/SIGINT, leaving tunnels on their current key (on_shutdown: keep); "
        "SIGHUP re-reads the configuration and applies only what changed.",
    )
    p.add_argument("--config", "-c", type=Path, required=True, metavar="FILE",
                   help="the YAML configuration (validate it first with check-config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: configuration is invalid; nothing was started:", file=sys.stderr)
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(cfg.telemetry.log.format, cfg.telemetry.log.level)
    try:
        return asyncio.run(_main(cfg, args.config))
    except _STARTUP_ERRORS as exc:
        print(f"qkd-gateway: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except ExceptionGroup as group:
        # A task of the daemon's TaskGroup failed (e.g. a tunnel's interface is missing): report
        # operator errors as such; anything else is a bug and keeps its traceback.
        known = group.subgroup(lambda e: isinstance(e, _STARTUP_ERRORS))
        if known is None or group.subgroup(
                lambda e: not isinstance(e, (*_STARTUP_ERRORS, ExceptionGroup))) is not None:
            raise
        for leaf in _leaves(known):
            print(f"qkd-gateway: cannot start: {leaf}", file=sys.stderr)
        return EXIT_STARTUP


_STARTUP_ERRORS = (BuildError, IdentityError, StateError, DataplaneError, KmsError,
                   TelemetryError, OSError)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _main(cfg: Any, path: Path) -> int:
    from gateway.daemon.app import Daemon  # heavy imports only when really running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(cfg, config_path=path)
    # systemctl reload: re-read the file, apply the difference (an invalid file changes nothing).
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    await daemon.run(stop)
    return 0
