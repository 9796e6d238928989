"""`qkd-gateway demo`: sites in network namespaces, a WAN, the KME network, daemons, pings.

Builds the RoNaQCI network by default (six cities, trusted nodes on the long spans, two KME
networks, one span short of key; ``--topology pair`` or ``star`` for the small labs), writes each
site's keys and configuration into a private temporary directory, starts the KME network and one
``qkd-gateway run`` per site inside its namespace, pings across every tunnel at 20/s with a live
view (plain lines when stdout is not a terminal) and prints a report. Exit codes: 0 every check
passed; 1 a check failed (a ping lost, a tunnel rotated fewer than three times, keys differ, the
starved span's rotation did not stretch or its alarm did not clear); 2 the lab could not be built
(the message says why and what to install); 130/143 interrupted by SIGINT/SIGTERM before the
pings started. Everything the demo created (namespaces, processes, sockets, the temporary
directory) is removed on every exit path; ``--cleanup`` removes what a crashed run left behind.
See docs/demo.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.dataplane.xfrm import esp_unavailable
from gateway.demo import (
    DATAPLANES,
    MAX_SITES,
    TOPOLOGIES,
    DemoError,
    DemoOptions,
    Interrupted,
    ToolMissing,
    cleanup,
    run_demo,
    stale_prefixes,
)
from gateway.demo.mqttrelay import parse_host_port

__all__ = ["register", "run"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _sites(text: str) -> int:
    if not text.isdigit() or not 2 <= int(text) <= MAX_SITES:
        raise argparse.ArgumentTypeError(f"--sites {text!r}: give 2 to {MAX_SITES}")
    return int(text)


def _host_port(text: str) -> str:
    try:
        parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run the lab demo: sites in network namespaces, KMS, tunnels, pings",
        description="Build sites in network namespaces joined by a simulated WAN, start the "
                    "KME network and a gateway per site, ping across every tunnel at 20/s and "
                    "report. Needs root. Removes everything it created on exit.",
    )
    p.add_argument("--topology", choices=TOPOLOGIES, default="ronaqci",
                   help="ronaqci: six cities, trusted nodes, two-path keys, a starved span "
                        "(default); pair: two sites; star: --sites sites around the first")
    p.add_argument("--sites", type=_sites, default=None, metavar="N",
                   help=f"number of sites of the star topology, 2-{MAX_SITES} (default 6)")
    p.add_argument("--dataplane", choices=DATAPLANES, default="wireguard",
                   help="tunnel type: wireguard (kernel WireGuard if the kernel has it, else "
                        "wireguard-go); kernel (kernel WireGuard over netlink); xfrm (ESP "
                        "tunnels); mixed (ESP and WireGuard alternating). kernel, xfrm and mixed "
                        "need those in the kernel: elsewhere `make demo-vm` runs them in the "
                        "kernel lab")
    p.add_argument("--duration", type=_seconds, default=None, metavar="SECONDS",
                   help="how long to ping (default: until Ctrl-C)")
    p.add_argument("--rekey-interval", type=_seconds, default=10.0, metavar="SECONDS",
                   help="key rotation interval of every tunnel (default 10)")
    p.add_argument("--lab-only", action="store_true",
                   help="no daemons: check the lab itself (namespaces, KMS over mutual TLS, "
                        "pings between WAN addresses)")
    p.add_argument("--mqtt", type=_host_port, default=None, metavar="HOST:PORT",
                   help="every site publishes its telemetry to this MQTT broker (reached "
                        "through a relay in the lab, so 127.0.0.1 works)")
    p.add_argument("--picture", type=Path, default=None, metavar="FILE",
                   help="where to write the ronaqci SVG picture "
                        "(default /tmp/qkd-demo-<lab>.svg)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the key rates' fluctuation (same seed, same rates)")
    p.add_argument("--plain", action="store_true",
                   help="plain progress lines even on a terminal (no live table)")
    p.add_argument("--keep", action="store_true",
                   help="keep the run directory (configs, keys, logs) and print its path")
    p.add_argument("--cleanup", action="store_true",
                   help="only remove what crashed demo runs left behind, then exit")
    p.set_defaults(func=run)


def _requirements(lab_only: bool) -> None:
    if os.geteuid() != 0:
        raise ToolMissing("the demo creates network namespaces and needs root: "
                          "run it with sudo (or as root)")
    needed = {"ip": "iproute2"}
    if not lab_only:
        needed["wg"] = "wireguard-tools"
    for tool, package in needed.items():
        if shutil.which(tool) is None:
            raise ToolMissing(f"`{tool}` not found: apt-get install {package}")


def _say(line: str) -> None:
    print(f"demo: {line}", file=sys.stderr, flush=True)


async def _main(options: DemoOptions) -> int:
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        # While pinging, a signal ends the run with a report; during setup, run_demo tears
        # down and raises Interrupted.
        report = await run_demo(options, stop=stop, say=_say, esp_probe=esp_unavailable)
    except Interrupted as exc:
        _say(f"{exc} (signal {received[0]})")
        return 128 + received[0]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print(report.table())
    return 0 if report.ok else 1


def run(args: argparse.Namespace) -> int:
    try:
        _requirements(args.lab_only or args.cleanup)
        if args.cleanup:
            prefixes = stale_prefixes()
            for prefix in prefixes:
                for item in cleanup(prefix):
                    print(f"removed {item}")
            print(f"demo: {len(prefixes)} crashed run(s) cleaned up")
            return 0
        if args.sites is not None and args.topology != "star":
            print("demo: error: --sites N goes with --topology star", file=sys.stderr)
            return 2
        options = DemoOptions(sites=args.sites or 6, duration=args.duration,
                              rekey_interval=args.rekey_interval, dataplane=args.dataplane,
                              lab_only=args.lab_only, keep=args.keep, topology=args.topology,
                              mqtt=args.mqtt, picture=args.picture, seed=args.seed,
                              live=sys.stdout.isatty() and not args.plain)
        return asyncio.run(_main(options))
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
