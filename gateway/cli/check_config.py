"""`qkd-gateway check-config FILE`: validate a configuration like `sshd -t`.

Exit 0 with a short summary of what `run` would set up; exit 2 with every problem on stderr (one
line each: YAML path, line, what is wrong, how to fix it) and no traceback. Referenced key files,
certificates and systemd credentials must exist (checked by the loader) and must parse: identity
keys load, WireGuard keys are 32 bytes, each client key matches its certificate. The summary
names keys by fingerprint and path only, never by content.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import (
    ConfigError,
    Endpoint,
    GatewayConfig,
    Problem,
    format_duration,
    load_config,
)
from gateway.config.errors import render_path
from gateway.config.loader import read_yaml
from gateway.identity import IdentityError, PeerPublicKeys, SiteIdentity

__all__ = ["key_problems", "register", "run", "summary"]

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
    listen = Endpoint(str(config.listen.address), config.listen.port)
    lines = [f"site {s.name}: SAE {s.sae_id}, peer protocol on {listen}, "
             f"state in {config.state_dir}"]
    for k in config.kms:
        kme = f" KME {k.kme_id}" if k.kme_id else ""
        line = (f"kms {k.name}: {k.kind} {k.url}{kme}, pool {k.pool.target} "
                f"(batch {k.pool.batch}, refill below {k.pool.low_water}), ")
        line += (f"rekeys slow down below {k.low_stock} stored keys" if k.low_stock
                 else "rekeys never slow down")
        if k.skip is not None and k.skip.remote_system_ids:
            pairs = (f"{sae}={rid}" for sae, rid in k.skip.remote_system_ids.items())
            line += f", remote systems {', '.join(pairs)}"
        lines.append(line)
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


def _wireguard_key_problem(path: Path) -> str:
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except (OSError, ValueError, binascii.Error):
        raw = b""
    if len(raw) == 32:
        return ""
    return f"{path} is not a WireGuard private key (base64 of 32 bytes)"


def _tls_pair_problem(cert_path: Path, key_path: Path) -> str:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return f"{cert_path} is not a PEM certificate"
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        # The parser's message is not shown: it could quote key material.
        return f"{key_path} is not an unencrypted PEM private key"
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        return f"{key_path} does not belong to the certificate {cert_path}"
    return ""


def key_problems(config: GatewayConfig, source: Path) -> list[Problem]:
    """Problems inside the referenced key files (the loader checks only that they exist):
    identity keys that do not parse, WireGuard keys that are not 32 bytes, client certificates
    whose key does not match. Messages name files, never their content."""
    doc = read_yaml(source)
    found: list[tuple[tuple[str | int, ...], str, str]] = []
    ident = config.site.identity
    try:
        SiteIdentity.load(ident.ed25519_key.path, ident.mldsa65_key.path)
    except IdentityError as exc:
        found.append((("site", "identity"), str(exc), "write new keys with `qkd-gateway keygen`"))
    for i, t in enumerate(config.tunnels):
        wg = t.wireguard
        if wg is not None and wg.private_key is not None:
            reason = _wireguard_key_problem(wg.private_key.path)
            if reason:
                found.append((("tunnels", i, "wireguard", "private_key"), reason,
                              "write one with `wg genkey` or `qkd-gateway keygen --wireguard`"))
    pairs: list[tuple[tuple[str | int, ...], Path, Path]] = [
        (("kms", i, "client_key"), k.client_cert, k.client_key.path)
        for i, k in enumerate(config.kms)
    ]
    mqtt = config.telemetry.mqtt
    if mqtt is not None and mqtt.client_cert is not None and mqtt.client_key is not None:
        pairs.append((("telemetry", "mqtt", "client_key"), mqtt.client_cert, mqtt.client_key.path))
    for loc, cert, key in pairs:
        reason = _tls_pair_problem(cert, key)
        if reason:
            found.append((loc, reason, "use the certificate and key issued together"))
    problems = [Problem(render_path(loc), doc.line_of(loc), msg, fix) for loc, msg, fix in found]
    return sorted(problems, key=lambda p: p.line)


def _report(path: Path, problems: list[Problem]) -> int:
    count = len(problems)
    print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_INVALID


def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        config = load_config(path)
        deep = key_problems(config, path)
    except ConfigError as exc:
        return _report(path, exc.problems)
    if deep:
        return _report(path, deep)
    if not args.quiet:
        print(f"{path}: OK")
        for line in summary(config):
            print(f"  {line}")
    return 0
