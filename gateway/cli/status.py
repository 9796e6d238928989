"""`qkd-gateway status --config FILE`: ask the running daemon how its tunnels are doing."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig
from gateway.config.loader import read_yaml
from gateway.daemon.control import ControlError, request

__all__ = ["ask", "control_socket", "register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="show the running daemon's tunnels, key pools and alarms",
        description="Query the daemon over its control socket (from the configuration).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", "-c", type=Path, metavar="FILE",
                       help="the daemon's configuration (names the control socket)")
    where.add_argument("--socket", type=Path, metavar="PATH",
                       help="the control socket itself (e.g. while the file has an error)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.add_argument("--tunnel", action="append", metavar="NAME", dest="tunnels",
                   help="only this tunnel (repeat for more); a big hub answers faster")
    p.add_argument("--summary", action="store_true",
                   help="counts instead of one line per tunnel (tunnels, failed closed, low "
                        "stock, sessions up, keys installed), for sites with thousands")
    p.set_defaults(func=run)


def _render(st: dict[str, Any]) -> str:
    conf = st.get("config") or {}
    lines = [f"site {st['site']}  version {st['version']}  up {st['uptime_s']:.0f} s  "
             f"config generation {conf.get('generation', '?')}"]
    lines.append(f"{'tunnel':<16} {'epoch':>6} {'state':<8} {'key age':>8} {'expires':>8} "
                 f"{'rekeys':>6}  achieved")
    tunnels = st["tunnels"]
    if "count" in tunnels and "failed_closed" in tunnels:  # --summary
        closed = ", ".join(tunnels["failed_closed_names"]) or "none"
        lines[1:] = [f"tunnels {tunnels['count']}  failed closed {tunnels['failed_closed']} "
                     f"({closed})  low stock {tunnels['low_stock']}  sessions up "
                     f"{tunnels['session_up']}  keys installed {tunnels['keys_installed']}"]
        tunnels = {}
    for name, t in sorted(tunnels.items()):
        state = "CLOSED" if t["closed"] else ("up" if t["session_up"] else "no-peer")
        age = "-" if t["key_age_s"] is None else f"{t['key_age_s']:.0f}s"
        exp = "-" if t["expires_in_s"] is None else f"{t['expires_in_s']:.0f}s"
        wg = t.get("wg") or {}
        esp = t.get("esp") or {}
        in_use = "" if not wg.get("handshakes") else (
            f"  in use: epoch {wg['psk_in_use_epoch']}, fresh handshakes "
            f"{wg['fresh_handshakes']}/{wg['handshakes']}")
        if esp.get("spi_out"):  # ESP: the outbound SA is in use the moment it is installed
            in_use = (f"  in use: epoch {esp.get('key_in_use_epoch')}, SPI out "
                      f"{esp['spi_out']} in {esp.get('spi_in')}")
        lines.append(f"{name:<16} {t['epoch']:>6} {state:<8} {age:>8} {exp:>8} "
                     f"{t['rekeys_completed']:>6}  {t['achieved'] or '-'}{in_use}")
    for name, p in sorted(st["pools"].items()):
        stock = p["stored_key_count"]
        lines.append(f"pool {name}: {p['size']}/{p['capacity']} keys, KMS stock "
                     f"{'?' if stock is None else stock}, wasted {p['wasted']}")
    lines.append("alarms: " + (", ".join(st["alarms"]) or "none"))
    return "\n".join(lines)


def control_socket(args: argparse.Namespace) -> Path | None:
    """``--socket``, or the ``control_socket`` the file at ``--config`` names (None: printed
    why not). Only that one key is read: asking a running daemon needs neither its secrets
    ($CREDENTIALS_DIRECTORY) nor a file that passes every check (it may have been edited)."""
    if args.socket is not None:
        return Path(args.socket)
    path = Path(args.config)
    try:
        doc = read_yaml(path)
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return None
    data = doc.data if isinstance(doc.data, dict) else {}
    value = data.get("control_socket", str(GatewayConfig.model_fields["control_socket"].default))
    if not isinstance(value, str) or not value:
        print(f"{path}: control_socket is not a path; pass --socket", file=sys.stderr)
        return None
    return (path.resolve().parent / value) if not Path(value).is_absolute() else Path(value)


def ask(socket: Path, req: dict[str, Any]) -> dict[str, Any] | None:
    """One control request; None (the reason printed) if the daemon cannot be reached or
    refuses it."""
    what = f"qkd-gateway {req['cmd']}"
    try:
        answer = asyncio.run(request(socket, req))
    except ControlError as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        return None
    if not answer.get("ok"):
        print(f"{what}: {answer.get('error')}", file=sys.stderr)
        return None
    return answer


def run(args: argparse.Namespace) -> int:
    socket = control_socket(args)
    if socket is None:
        return 2
    req: dict[str, Any] = {"cmd": "status", "summary": bool(args.summary)}
    if args.tunnels:
        req["tunnels"] = list(args.tunnels)
    answer = ask(socket, req)
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2) if args.json else _render(answer))
    return 0
