"""`qkd-gateway` command line: a table of subcommands, one module each.

Each module in ``_COMMANDS`` exposes ``register(subparsers) -> None``; the parser it adds sets
``func`` to a callable taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

__all__ = ["build_parser", "main"]

# Order is the order of `qkd-gateway --help`.
_COMMANDS = ("run", "status", "rekey", "check_config", "keygen", "failsafe", "kms_sim",
             "demo", "version")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkd-gateway",
        description="Quantum-secured VPN gateway: QKD + ML-KEM + X25519 keys for WireGuard/IPsec.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        module = importlib.import_module(f"gateway.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = cast(Callable[[argparse.Namespace], int], args.func)
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
