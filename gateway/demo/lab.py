"""The demo, start to finish: plan, keys, namespaces, the KME network, the site daemons, pings,
the report, and a teardown that leaves nothing behind (also on SIGINT/SIGTERM and on errors).

Topologies: ``ronaqci`` (six cities, trusted nodes, two KME networks, a starved span;
:mod:`gateway.demo.ronaqci`), ``pair`` (two sites) and ``star`` (``sites`` sites around the
first). The site daemons are started by an injectable step, ``start_site(site, plan, procs)``;
the default runs ``qkd-gateway run --config <site>/config.yaml`` inside the site's namespace.
``lab_only`` skips the daemons and pings the peers' WAN addresses instead: the lab checks itself
(namespaces, bridge, KMS over mutual TLS, pinger) without any daemon.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.demo.mqttrelay import MQTT_PORT
from gateway.demo.processes import LabProcess, ProcessSet, gateway_argv
from gateway.demo.report import DemoReport
from gateway.demo.ronaqci import plan_ronaqci
from gateway.demo.session import SessionSettings, StartSite, run_session
from gateway.demo.siteconfig import materialize
from gateway.demo.sites import CITY_NAMES, LabPlan, SitePlan, dataplane_of, plan_lab, site_names
from gateway.demo.support import (
    ESP_DATAPLANES,
    EspProbe,
    choose_backend,
    in_kernel_lab,
    ip_esp_probe,
    ping_timeout,
    prepare_esp_ends,
    require_esp,
)
from gateway.demo.topology import KMS_ADDRESS, Topology, new_prefix

__all__ = ["TOPOLOGIES", "DemoOptions", "StartSite", "detect_backend", "gateway_argv",
           "run_demo", "start_daemon"]

TOPOLOGIES = ("ronaqci", "pair", "star")
# Where the sites reach the MQTT relay on the KMS node (gateway.demo.mqttrelay).
MQTT_URL_IN_LAB = f"mqtt://{KMS_ADDRESS.ip}:{MQTT_PORT}"


@dataclass(frozen=True)
class DemoOptions:
    """What `qkd-gateway demo` was asked to do (see docs/demo.md)."""

    sites: int = 2  # star/pair: number of sites
    duration: float | None = None  # None: until stopped (Ctrl-C)
    rekey_interval: float = 10.0
    dataplane: str = "wireguard"  # wireguard | kernel | xfrm | mixed
    lab_only: bool = False
    keep: bool = False  # keep the run directory (keys, configs, logs) for inspection
    topology: str = "star"  # ronaqci | pair | star (the CLI's default is ronaqci)
    mqtt: str | None = None  # HOST:PORT of a broker every site publishes to
    picture: Path | None = None  # where the ronaqci SVG goes (default /tmp/qkd-demo-<lab>.svg)
    seed: int = 0  # seed of the key-rate fluctuation
    live: bool = False  # the rich live view (the CLI turns it on when stdout is a terminal)
    ping_timeout: float | None = None  # None: 1 s, or 5 s in the kernel lab (gateway.demo.support)


async def start_daemon(site: SitePlan, plan: LabPlan, procs: ProcessSet) -> LabProcess:
    """The default ``start_site``: ``qkd-gateway run --config FILE`` in the site's namespace."""
    argv = gateway_argv("run", "--config", str(site.config_path))
    return await procs.start(f"daemon {site.name}", site.netns, argv, site.log_path)


def detect_backend(netns: str, probe_name: str) -> str:
    """``kernel`` if a WireGuard link can be made in ``netns``, else ``userspace`` if
    wireguard-go is installed; else :class:`ToolMissing` with the install hint."""
    return choose_backend("wireguard", netns, probe_name)


def names_of(options: DemoOptions) -> list[str]:
    if options.topology not in TOPOLOGIES:
        raise ValueError(f"topology {options.topology!r}: choose one of {', '.join(TOPOLOGIES)}")
    if options.topology == "ronaqci":
        return list(CITY_NAMES)
    return site_names(2 if options.topology == "pair" else options.sites)


def plan_for(options: DemoOptions, prefix: str, root: Path, backend: str,
             netns: dict[str, str] | None = None) -> LabPlan:
    """The lab's plan for ``options`` (pure)."""
    mqtt = None if options.mqtt is None else MQTT_URL_IN_LAB
    if options.topology == "ronaqci":
        return plan_ronaqci(prefix, root, options.rekey_interval, backend, netns,
                            options.dataplane, options.seed, mqtt)
    count = 2 if options.topology == "pair" else options.sites
    plan = plan_lab(prefix, root, count, options.rekey_interval, backend, netns,
                    options.dataplane)
    return plan if mqtt is None else dataclasses.replace(plan, mqtt=mqtt)


async def run_demo(
    options: DemoOptions,
    *,
    start_site: StartSite = start_daemon,
    stop: asyncio.Event | None = None,
    say: Callable[[str], None] = lambda line: None,
    esp_probe: EspProbe | None = None,
) -> DemoReport:
    """Run the demo; always tears everything down before returning or raising.

    Args:
        options: topology, sites, duration, rekey interval, data plane, lab-only, MQTT, picture.
        start_site: starts one site's daemon (the lead's ``qkd-gateway run``).
        stop: set it (e.g. from a SIGINT handler) to end the run early with a report.
        say: receives one progress line at a time (the CLI prints them).
        esp_probe: for ``xfrm``/``mixed``: None if the kernel takes an AES-GCM ESP SA, else why
            not (the data plane's ``esp_unavailable``); run before anything is built. Without
            one, or if it fails, ``ip xfrm state add`` is tried in the lab's WAN namespace.
    """
    stop = stop or asyncio.Event()
    names = names_of(options)
    dataplane_of(options.dataplane, 1)  # a bad choice fails before anything is built
    esp = options.dataplane in ESP_DATAPLANES and not options.lab_only
    esp_known = esp_probe is not None and esp and await require_esp(options.dataplane, esp_probe)
    prefix = new_prefix()
    root = Path(tempfile.mkdtemp(prefix=f"qkd-gateway-{prefix}-"))
    report = DemoReport(prefix, options.lab_only, options.topology)
    try:
        async with Topology(names, prefix) as topo:
            backend = "auto"
            if not options.lab_only:
                wan = topo.wan_netns
                backend = await asyncio.to_thread(choose_backend, options.dataplane, wan,
                                                  f"{prefix}wgp")
                if esp and not esp_known:
                    await require_esp(options.dataplane,
                                      lambda: asyncio.to_thread(ip_esp_probe, wan))
            plan = plan_for(options, prefix, root, backend,
                            {n: node.netns for n, node in topo.sites.items()})
            report.rekey_interval, report.reject_after = plan.rekey_interval, plan.reject_after
            await asyncio.to_thread(materialize, plan, not options.lab_only)
            if esp:
                await asyncio.to_thread(prepare_esp_ends, plan)
            trusted = sum(1 for k in plan.kms.kmes if k.trusted_node)
            say(f"lab {prefix}: {len(names)} sites ({', '.join(names)}), "
                f"{len(plan.kms.kmes)} KMEs ({trusted} trusted nodes), namespaces {prefix}-*, "
                f"files in {root}")
            timeout = options.ping_timeout or ping_timeout()
            if in_kernel_lab():
                say(f"kernel lab (QEMU TCG, 5-10x slower than a host): a ping answered within "
                    f"{timeout:g} s counts, not 1 s; the emulator alone delays replies past 1 s")
            settings = SessionSettings(options.duration, options.lab_only, options.mqtt,
                                       options.picture, options.live, timeout)
            async with ProcessSet() as procs:
                await run_session(plan, settings, procs, start_site, stop, say, report)
    finally:
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report
