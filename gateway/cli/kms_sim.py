"""`qkd-gateway kms-sim`: run the embedded ETSI GS QKD 014 / SKIP KME network as a process.

Example (two sites and a trusted relay; the first link makes 10 kbit/s, the second 2 kbit/s
and starts with 5 keys; both rates wander +-30 % around their means)::

    qkd-gateway kms-sim --pki-dir pki \\
        --kme KME_A=127.0.0.1:8443 --kme KME_R=127.0.0.1:8444 --kme KME_B=127.0.0.1:8445 \\
        --link KME_A:KME_R@10000 --link KME_R:KME_B@2000,start=5 \\
        --sae SAE_A@KME_A --sae SAE_B@KME_B --fluctuation walk:0.3 --seed 7

Creates whatever is missing in the PKI directory, logs one ``kms_sim_ready`` event with every
KME's URL once all listen, and runs until SIGTERM or SIGINT, then exits 0. With
``--report-interval S`` it logs every link's stock and rate (``kms_link_stock``) every S seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from gateway.kms.sim import Fluctuation, KmeNetwork, LinkSpec, parse_fluctuation

__all__ = ["register", "run"]


def _kme(text: str) -> tuple[str, tuple[str, int]]:
    kme_id, sep, address = text.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not kme_id or not host:
        raise argparse.ArgumentTypeError(
            f"--kme {text!r}: expected ID=HOST:PORT, e.g. KME_A=127.0.0.1:8443")
    try:
        number = int(port, 10)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"--kme {text!r}: port must be 0-65535 (0 = any free)")
    return kme_id, (host.strip("[]"), number)


def _link(text: str) -> LinkSpec:
    usage = f"--link {text!r}: expected KME_ID1:KME_ID2[@BITS_PER_S][,start=KEYS]"
    head, *options = text.split(",")
    ends, at, rate_text = head.partition("@")
    a, sep, b = ends.partition(":")
    if not sep or not a or not b or (at and not rate_text):
        raise argparse.ArgumentTypeError(usage)
    rate: float | None = None
    if at:
        try:
            rate = float(rate_text)
        except ValueError:
            rate = -1.0
        if not (rate >= 0 and rate != float("inf")):
            raise argparse.ArgumentTypeError(f"--link {text!r}: the rate after @ must be a "
                                             "number of bits/s >= 0, e.g. KME_A:KME_B@2000")
    start: int | None = None
    for option in options:
        key, eq, value = option.partition("=")
        if key != "start" or not eq or not value.isdigit():
            raise argparse.ArgumentTypeError(f"{usage} (start= takes a whole number of keys)")
        start = int(value)
    return LinkSpec(a, b, rate, start)


def _sae(text: str) -> tuple[str, str]:
    sae, sep, kme = text.partition("@")
    if not sep or not sae or not kme:
        raise argparse.ArgumentTypeError(f"--sae {text!r}: expected SAE_ID@KME_ID")
    return sae, kme


def register(sub: Any) -> None:
    p = sub.add_parser(
        "kms-sim", help="run a simulated ETSI GS QKD 014 / SKIP KME network",
        description="Run simulated KMEs (mutual-TLS HTTPS, ETSI GS QKD 014 and SKIP) joined by "
                    "QKD links with finite key pools. Runs until SIGTERM/SIGINT.",
    )
    p.add_argument("--pki-dir", type=Path, required=True,
                   help="PKI directory; the CA and missing certificates are created")
    p.add_argument("--kme", type=_kme, action="append", required=True, metavar="ID=HOST:PORT",
                   help="a KME and its listening address (port 0 = any free port); repeatable")
    p.add_argument("--link", type=_link, action="append", default=[],
                   metavar="ID1:ID2[@RATE][,start=KEYS]",
                   help="a QKD link between two KMEs, with its own mean key rate in bits/s "
                        "(default --key-rate) and the keys in its pool at start (default full); "
                        "repeatable")
    p.add_argument("--sae", type=_sae, action="append", default=[], metavar="SAE_ID@KME_ID",
                   help="an SAE (client certificate CN) attached to a KME; repeatable; one SAE "
                        "may be attached to one KME in each of several unconnected networks")
    p.add_argument("--key-rate", type=float, default=0.0, metavar="BITS_PER_S",
                   help="mean refill rate in bits/s of every link that sets none "
                        "(default 0: never refills)")
    p.add_argument("--fluctuation", default="none", metavar="MODEL",
                   help="how link rates move around their means: none, walk:SPREAD[:STEP_S] "
                        "(seeded mean-reverting random walk within +-SPREAD, e.g. walk:0.3) or "
                        "sine:DEPTH:PERIOD_S (e.g. sine:0.5:60); default none")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the rate fluctuation (same seed, same rates); default 0")
    p.add_argument("--report-interval", type=float, default=0.0, metavar="SECONDS",
                   help="log every link's stock and rate (kms_link_stock) this often; "
                        "default 0: never")
    p.add_argument("--max-key-count", type=int, default=1000, metavar="N",
                   help="link pool capacity in keys of --key-size bits (default 1000)")
    p.add_argument("--key-size", type=int, default=256, metavar="BITS",
                   help="default key size in bits (default 256)")
    p.add_argument("--max-key-per-request", type=int, default=128, metavar="N",
                   help="largest number of keys one request may ask for (default 128)")
    p.add_argument("--log-format", choices=("console", "json"), default="console",
                   help="log rendering (default console)")
    p.set_defaults(func=run)


def _configure_logs(fmt: str) -> None:
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


async def _serve(net: KmeNetwork, kmes: list[str], report_interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = structlog.get_logger("gateway.cli.kms_sim")
    async with net:
        log.info("kms_sim_ready", kmes={k: net.url(k) for k in kmes},
                 pki_dir=str(net.pki.directory))
        while True:
            if report_interval > 0:
                log.info("kms_link_stock", links=net.link_report())
            try:
                async with asyncio.timeout(report_interval or None):  # not wait_for: see
                    await stop.wait()  # gateway.daemon.lifetime._wait_changed
                break
            except TimeoutError:
                continue
        log.info("kms_sim_stopping")


def _saes(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    attached: dict[str, list[str]] = {}
    for sae, kme in pairs:
        attached.setdefault(sae, []).append(kme)
    return attached


def run(args: argparse.Namespace) -> int:
    _configure_logs(args.log_format)
    kmes = dict(args.kme)
    if len(kmes) != len(args.kme):
        print("kms-sim: error: a KME ID is given twice with --kme", file=sys.stderr)
        return 2
    if not args.report_interval >= 0:
        print("kms-sim: error: --report-interval must be >= 0 seconds", file=sys.stderr)
        return 2
    try:
        fluctuation: Fluctuation = parse_fluctuation(args.fluctuation, args.seed)
        net = KmeNetwork(
            args.pki_dir, kmes=kmes, links=list(args.link), saes=_saes(args.sae),
            key_rate=args.key_rate, max_key_count=args.max_key_count, key_size=args.key_size,
            max_key_per_request=args.max_key_per_request, fluctuation=fluctuation,
        )
    except ValueError as exc:
        print(f"kms-sim: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(net, list(kmes), args.report_interval))
    except OSError as exc:
        print(f"kms-sim: error: cannot listen: {exc}; pick another --kme port or stop the "
              "process that holds it", file=sys.stderr)
        return 1
    return 0
