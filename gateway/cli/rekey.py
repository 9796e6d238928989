"""`qkd-gateway rekey TUNNEL --config FILE`: have the running daemon rekey a tunnel now.

For a NOC that suspects a key (a KMS incident, a trusted node under investigation) or wants to
see a rotation happen. The daemon starts the exchange at once (one already running counts) and
answers; the new epoch shows in `qkd-gateway status` and the `tunnel_rekeyed` event.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.cli.status import ask, control_socket

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rekey", help="rekey a tunnel now (through the running daemon)",
        description="Ask the running daemon (over its control socket) to start a rekey of "
        "TUNNEL at once. Exit 0 when it started (or one was running), 1 when refused.",
    )
    p.add_argument("tunnel", metavar="TUNNEL", help="the tunnel's name, as in the config")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", "-c", type=Path, metavar="FILE")
    where.add_argument("--socket", type=Path, metavar="PATH", help="the control socket itself")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    socket = control_socket(args)
    if socket is None:
        return 2
    answer = ask(socket, {"cmd": "rekey", "tunnel": args.tunnel})
    if answer is None:
        return 1
    print(f"{args.tunnel}: rekey started (current epoch {answer.get('epoch')})")
    return 0
