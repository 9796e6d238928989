"""`qkd-gateway version`: the package version and the crypto library it runs on."""

from __future__ import annotations

import argparse
from typing import Any

import cryptography

from gateway import __version__


def register(sub: Any) -> None:
    p = sub.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"qkd-gateway {__version__} (cryptography {cryptography.__version__})")
    return 0
