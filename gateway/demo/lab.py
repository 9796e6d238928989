"""The demo, start to finish: plan, keys, namespaces, the KME network, the site daemons, pings,
the report, and a teardown that leaves nothing behind (also on SIGINT/SIGTERM and on errors).

The site daemons are started by an injectable step, ``start_site(site, plan, procs)``; the
default runs ``qkd-gateway run --config <site>/config.yaml`` inside the site's namespace.
``lab_only`` skips the daemons and pings the peers' WAN addresses instead: the lab checks
itself (namespaces, bridge, KMS over mutual TLS, pinger) without any daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gateway.demo.errors import Interrupted, LabProcessError, ToolMissing
from gateway.demo.kmsprobe import wait_for_kme
from gateway.demo.netns import run_ip
from gateway.demo.pinger import Pinger
from gateway.demo.processes import LabProcess, ProcessSet
from gateway.demo.report import DemoReport, TunnelReport
from gateway.demo.rotations import RotationReader, psk_matches
from gateway.demo.siteconfig import materialize
from gateway.demo.sites import LabPlan, SitePlan, plan_lab, site_names
from gateway.demo.topology import KMS_ADDRESS, Topology, new_prefix

__all__ = ["DemoOptions", "StartSite", "detect_backend", "gateway_argv", "run_demo", "start_daemon"]

StartSite = Callable[[SitePlan, LabPlan, ProcessSet], Awaitable[LabProcess]]
T = TypeVar("T")

# On the host the KME network answers after ~1 s and the daemons key their tunnels 1.5-3.5 s
# later; in the kernel-lab VM (QEMU TCG) both took ~96 s (interpreter start-up dominates). A
# process that dies ends the wait at once, so these only bound a hang.
KMS_READY_TIMEOUT_S = 180.0
TUNNELS_READY_TIMEOUT_S = 180.0
_POLL_S = 0.5
PROGRESS_EVERY_S = 10.0  # an open-ended run shows it is alive without flooding the terminal


@dataclass(frozen=True)
class DemoOptions:
    """What `qkd-gateway demo` was asked to do (see docs/demo.md)."""

    sites: int = 2
    duration: float | None = None  # None: until stopped (Ctrl-C)
    rekey_interval: float = 10.0
    dataplane: str = "wireguard"
    lab_only: bool = False
    keep: bool = False  # keep the run directory (keys, configs, logs) for inspection


def gateway_argv(subcommand: str, *args: str) -> list[str]:
    """``python -m gateway SUBCOMMAND ARGS`` with this interpreter (the venv's): the lab runs
    the very code it was started from, whatever is on PATH."""
    return [sys.executable, "-m", "gateway", subcommand, *args]


async def start_daemon(site: SitePlan, plan: LabPlan, procs: ProcessSet) -> LabProcess:
    """The default ``start_site``: ``qkd-gateway run --config FILE`` in the site's namespace."""
    argv = gateway_argv("run", "--config", str(site.config_path))
    return await procs.start(f"daemon {site.name}", site.netns, argv, site.log_path)


def detect_backend(netns: str, probe_name: str) -> str:
    """``kernel`` if a WireGuard link can be made in ``netns``, else ``userspace`` if
    wireguard-go is installed; else :class:`ToolMissing` with the install hint."""
    try:
        run_ip("-n", netns, "link", "add", probe_name, "type", "wireguard")
    except Exception:
        if shutil.which("wireguard-go") is None:
            raise ToolMissing("no kernel WireGuard and no wireguard-go: "
                              "apt-get install wireguard-go wireguard-tools") from None
        return "userspace"
    run_ip("-n", netns, "link", "del", probe_name, check=False)
    return "kernel"


async def _unless_stopped(stop: asyncio.Event, step: Awaitable[T]) -> T:
    """Await a setup step, abandoning it (and raising :class:`Interrupted`) on a stop request:
    an operator's Ctrl-C must not wait out a 20 s KMS timeout."""
    task = asyncio.ensure_future(step)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Interrupted("stopped during setup; everything the demo made was removed")
    return task.result()


async def _wait_tunnels(plan: LabPlan, readers: dict[str, RotationReader],
                        procs: ProcessSet) -> None:
    """Until every tunnel has one epoch logged by both ends (its first key is in)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + TUNNELS_READY_TIMEOUT_S + plan.rekey_interval
    while True:
        if all(_both_ends(plan, readers, t.name, t.hub, t.spoke) for t in plan.tunnels):
            return
        _check_alive(procs)
        if loop.time() > end:
            raise LabProcessError(
                "the tunnels got no key within "
                f"{TUNNELS_READY_TIMEOUT_S + plan.rekey_interval:g} s; see the daemon logs: "
                + ", ".join(str(s.log_path) for s in plan.sites))
        await asyncio.sleep(_POLL_S)


def _both_ends(plan: LabPlan, readers: dict[str, RotationReader], tunnel: str,
               hub: str, spoke: str) -> set[int]:
    return readers[hub].poll().get(tunnel, set()) & readers[spoke].poll().get(tunnel, set())


def _check_alive(procs: ProcessSet) -> None:
    for proc in procs.exited():
        raise LabProcessError(f"{proc.name} exited with code {proc.returncode}; last output "
                              f"({proc.log_path}):\n{proc.log_tail()}")


async def _wait_until(stop: asyncio.Event, duration: float | None, procs: ProcessSet,
                      tick: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    end = None if duration is None else loop.time() + duration
    next_tick = loop.time() + PROGRESS_EVERY_S
    while not stop.is_set() and (end is None or loop.time() < end):
        _check_alive(procs)
        if loop.time() >= next_tick:
            tick()
            next_tick += PROGRESS_EVERY_S
        timeout = _POLL_S if end is None else max(0.0, min(_POLL_S, end - loop.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout)


async def run_demo(
    options: DemoOptions,
    *,
    start_site: StartSite = start_daemon,
    stop: asyncio.Event | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> DemoReport:
    """Run the demo; always tears everything down before returning or raising.

    Args:
        options: sites, duration, rekey interval, data plane, lab-only.
        start_site: starts one site's daemon (the lead's ``qkd-gateway run``).
        stop: set it (e.g. from a SIGINT handler) to end the run early with a report.
        say: receives one progress line at a time (the CLI prints them).
    """
    stop = stop or asyncio.Event()
    names = site_names(options.sites)
    prefix = new_prefix()
    root = Path(tempfile.mkdtemp(prefix=f"qkd-gateway-{prefix}-"))
    report = DemoReport(prefix, options.lab_only)
    try:
        async with Topology(names, prefix) as topo:
            backend = "auto"
            if not options.lab_only:
                backend = await asyncio.to_thread(detect_backend, topo.wan_netns, f"{prefix}wgp")
            plan = plan_lab(prefix, root, options.sites, options.rekey_interval, backend,
                            {n: node.netns for n, node in topo.sites.items()})
            await asyncio.to_thread(materialize, plan)
            say(f"lab {prefix}: {len(names)} sites ({', '.join(names)}), namespaces "
                f"{prefix}-*, files in {root}")
            async with ProcessSet() as procs:
                await _run_lab(plan, options, procs, start_site, stop, say, report)
    finally:
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report


async def _run_lab(plan: LabPlan, options: DemoOptions, procs: ProcessSet,
                   start_site: StartSite, stop: asyncio.Event,
                   say: Callable[[str], None], report: DemoReport) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    kms_argv = gateway_argv("kms-sim", *plan.kms_sim_args(), "--log-format", "json")
    await procs.start("kms-sim", f"{plan.prefix}-kms", kms_argv, plan.kms_log_path)
    probes = [
        wait_for_kme(s.netns, str(KMS_ADDRESS.ip), s.kme_port, deadline_s=KMS_READY_TIMEOUT_S,
                     check=lambda: _check_alive(procs), kme_id=s.kme_id,
                     slave_sae_id=plan.by_name[t.peer(s.name)].sae_id,
                     ca_file=plan.pki_dir / "ca.crt", cert_file=plan.pki_dir / f"{s.sae_id}.crt",
                     key_file=plan.pki_dir / f"{s.sae_id}.key")
        for s in plan.sites for t in plan.tunnels_of(s.name)[:1]
    ]
    await _unless_stopped(stop, asyncio.gather(*probes))
    report.kms_ready_s = loop.time() - t0
    say(f"KME network ready: every site reached its KME over mutual TLS "
        f"({report.kms_ready_s:.2f} s)")

    readers = {s.name: RotationReader(s.log_path) for s in plan.sites}
    if not options.lab_only:
        for site in plan.sites:
            await _unless_stopped(stop, start_site(site, plan, procs))
        t1 = loop.time()
        await _unless_stopped(stop, _wait_tunnels(plan, readers, procs))
        report.tunnels_ready_s = loop.time() - t1
        say(f"tunnels keyed ({report.tunnels_ready_s:.2f} s)")

    pingers: list[tuple[TunnelReport, Pinger]] = []
    for t in plan.tunnels:
        hub, spoke = plan.by_name[t.hub], plan.by_name[t.spoke]
        target = str(spoke.wan.ip if options.lab_only else t.address(t.spoke).ip)
        pingers.append((TunnelReport(t.name, t.hub, target), Pinger(hub.netns, target)))
    tasks = [asyncio.create_task(p.run(), name=f"ping-{r.name}") for r, p in pingers]
    say("pinging " + ", ".join(f"{r.name} ({r.target})" for r, _ in pingers) + " at 20/s"
        + ("" if options.duration is None else f" for {options.duration:g} s")
        + "; Ctrl-C stops")
    t2 = loop.time()

    def progress() -> None:
        parts = []
        for (tr, p), t in zip(pingers, plan.tunnels, strict=True):
            rot = ("" if options.lab_only else
                   f", {len(_both_ends(plan, readers, t.name, t.hub, t.spoke))} rotations")
            parts.append(f"{tr.name}: {p.stats.sent} sent, {p.stats.lost} lost{rot}")
        say(f"{loop.time() - t2:.0f} s: " + "; ".join(parts))

    try:
        await _wait_until(stop, options.duration, procs, progress)
    except LabProcessError as exc:
        report.errors.append(str(exc))
    finally:
        report.duration_s = loop.time() - t2
        for _, p in pingers:
            p.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for (tr, _), st in zip(pingers, results, strict=True):
        if isinstance(st, BaseException):
            report.errors.append(f"{tr.name}: pinger failed: {st}")
            continue
        tr.sent, tr.received, tr.lost, tr.late = st.sent, st.received, st.lost, st.late
        tr.rtt_avg_ms = st.rtt_avg_ms
    report.tunnels = [tr for tr, _ in pingers]
    if not options.lab_only:
        for tr, t in zip(report.tunnels, plan.tunnels, strict=True):
            tr.rotations = len(_both_ends(plan, readers, t.name, t.hub, t.spoke))
            hub, spoke = plan.by_name[t.hub], plan.by_name[t.spoke]
            tr.psk_match = await psk_matches(hub.netns, t.interface(t.hub),
                                             spoke.netns, t.interface(t.spoke))
