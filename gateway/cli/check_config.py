"""`qkd-gateway check-config FILE`: validate a configuration like `sshd -t`.

Exit 0 with a short summary of what `run` would set up; exit 2 with every problem on stderr (one
line each: YAML path, line, what is wrong, how to fix it) and no traceback. Referenced key files,
certificates and systemd credentials are checked too. The summary names keys by fingerprint and
path only, never by content.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig, format_duration, load_config
from gateway.identity import IdentityError, PeerPublicKeys

__all__ = ["register", "run", "summary"]

EXIT_INVALID = 2


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a configuration file and summarise it",
        description="Validate FILE and every file it references; print what would be set up "
        "(exit 0) or every problem found (exit 2).",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the YAML configuration file")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    p.set_defaults(func=run)


def _fingerprint(ed25519: bytes, mldsa65: bytes) -> str:
    try:
        return PeerPublicKeys(ed25519, mldsa65).fingerprint
    except IdentityError:  # lengths are validated at load; this is belt and braces
        return "invalid"


def summary(config: GatewayConfig) -> list[str]:
    """Human-readable lines describing what the gateway would set up."""
    s = config.site
    lines = [
        f"site {s.name}: SAE {s.sae_id}, peer protocol on "
        f"{config.listen.address}:{config.listen.port}, state in {config.state_dir}",
    ]
    for k in config.kms:
        kme = f" KME {k.kme_id}" if k.kme_id else ""
        lines.append(f"kms {k.name}: {k.kind} {k.url}{kme}, pool {k.pool.target} "
                     f"(batch {k.pool.batch}, refill below {k.pool.low_water})")
    for p in config.peers:
        fp = _fingerprint(p.public_keys.ed25519, p.public_keys.mldsa65)
        lines.append(f"peer {p.name}: SAE {p.sae_id} at {p.address}, identity {fp}")
    for t in config.tunnels:
        kms = ",".join(t.kms) if t.kms else "none"
        line = (f"tunnel {t.name}: {t.kind} on {t.interface} to {t.peer}, policy {t.policy}, "
                f"kms {kms}, rekey {format_duration(t.rekey_interval)}, "
                f"reject after {format_duration(t.reject_after)}, on shutdown {t.on_shutdown}")
        if t.wireguard is not None:
            wg = t.wireguard
            line += ", adopts existing interface" if wg.adopt else f", backend {wg.backend}"
        lines.append(line)
    tel = config.telemetry
    sinks = [f"log {tel.log.format}/{tel.log.level}"]
    if tel.mqtt is not None:
        sinks.append(f"mqtt {tel.mqtt.url} under {tel.mqtt.topic_prefix}/")
    if tel.metrics is not None:
        sinks.append(f"metrics on {tel.metrics.listen}")
    lines.append("telemetry: " + ", ".join(sinks))
    return lines


def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        config = load_config(path)
    except ConfigError as exc:
        count = len(exc.problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    if not args.quiet:
        print(f"{path}: OK")
        for line in summary(config):
            print(f"  {line}")
    return 0
