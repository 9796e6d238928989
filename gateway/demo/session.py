"""One run of a built lab: the KME network, the backup application, the daemons, the pings with
the live view, and the measurements the report is made of.

Called by :func:`gateway.demo.lab.run_demo` inside the namespaces and the process set, which
tear everything down whatever happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gateway.demo import cpu
from gateway.demo.consumer import Backup
from gateway.demo.errors import Interrupted, LabProcessError
from gateway.demo.espstate import esp_keys_match
from gateway.demo.kmsprobe import wait_for_kme
from gateway.demo.mqttrelay import MQTT_PORT, TcpRelay, parse_host_port
from gateway.demo.observe import LabObserver, TunnelState
from gateway.demo.picture import TunnelLine, write_picture
from gateway.demo.pinger import DEFAULT_TIMEOUT_S, Pinger
from gateway.demo.processes import LabProcess, ProcessSet, gateway_argv
from gateway.demo.report import DemoReport, TunnelReport
from gateway.demo.ronaqci import PLACES
from gateway.demo.rotations import psk_matches
from gateway.demo.sites import LabPlan, SitePlan
from gateway.demo.topology import KMS_ADDRESS
from gateway.demo.view import LiveView, progress_line

__all__ = ["BACKUP_AFTER_KEYED_S", "SessionSettings", "run_session"]

StartSite = Callable[[SitePlan, LabPlan, ProcessSet], Awaitable[LabProcess]]
T = TypeVar("T")

# On the host the KME network answers after ~1 s and the daemons key their tunnels 1.5-3.5 s
# later; in the kernel-lab VM (QEMU TCG) both took ~96 s for two sites (interpreter start-up
# dominates), more with three sites on a loaded host (kms-sim not listening after 300 s once, at
# load average 11 on 2 cores). A process that dies ends the wait at once, so these only bound a
# hang.
KMS_READY_TIMEOUT_S = 600.0
TUNNELS_READY_TIMEOUT_S = 600.0
TICK_S = 1.0  # the observer looks at everything, and the live view redraws, once a second
PROGRESS_EVERY_S = 10.0  # an open-ended run shows it is alive without flooding the terminal
# The backup keeps draining the starved span this long after every tunnel is keyed: by then
# every gateway has read the span's stock once (its pools start before its first rekey).
BACKUP_AFTER_KEYED_S = 5.0


@dataclass(frozen=True)
class SessionSettings:
    """What the session needs from the demo's options."""

    duration: float | None
    lab_only: bool
    mqtt: str | None
    picture: Path | None
    live: bool
    ping_timeout: float = DEFAULT_TIMEOUT_S  # a reply later than this is lost


async def unless_stopped(stop: asyncio.Event, step: Awaitable[T]) -> T:
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


def check_alive(procs: ProcessSet) -> None:
    for proc in procs.exited():
        raise LabProcessError(f"{proc.name} exited with code {proc.returncode}; last output "
                              f"({proc.log_path}):\n{proc.log_tail()}")


async def _kms_ready(plan: LabPlan, procs: ProcessSet) -> None:
    """Every site reaches each of its KMEs over mutual TLS, from its own namespace."""
    probes = []
    for s in plan.sites:
        for kme in s.kmes:
            peers = [t.peer(s.name) for t in plan.tunnels_of(s.name) if kme.network in t.kms]
            if not peers:
                continue
            probes.append(wait_for_kme(
                s.netns, str(KMS_ADDRESS.ip), kme.port, deadline_s=KMS_READY_TIMEOUT_S,
                check=lambda: check_alive(procs), kme_id=kme.kme_id,
                slave_sae_id=plan.by_name[peers[0]].sae_id, ca_file=plan.pki_dir / "ca.crt",
                cert_file=plan.pki_dir / f"{s.sae_id}.crt",
                key_file=plan.pki_dir / f"{s.sae_id}.key"))
    await asyncio.gather(*probes)


async def _wait_tunnels(plan: LabPlan, observer: LabObserver, procs: ProcessSet) -> None:
    """Until every tunnel has one epoch logged by both ends (its first key is in)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + TUNNELS_READY_TIMEOUT_S + plan.rekey_interval
    while not all(observer.both_ends(t) for t in plan.tunnels):
        check_alive(procs)
        if loop.time() > end:
            raise LabProcessError(
                "the tunnels got no key within "
                f"{TUNNELS_READY_TIMEOUT_S + plan.rekey_interval:g} s; see the daemon logs: "
                + ", ".join(str(s.log_path) for s in plan.sites))
        await asyncio.sleep(0.5)


def _backup(plan: LabPlan) -> Backup | None:
    if plan.starved is None or not plan.kms.extra_saes:
        return None
    (master, kme_id), (slave, _) = plan.kms.extra_saes[0], plan.kms.extra_saes[1]
    kme = plan.kms.by_id[kme_id]
    site = plan.by_name[kme.site or ""]
    return Backup(site.netns, str(KMS_ADDRESS.ip), kme.port, kme_id, master, slave, plan.pki_dir)


@contextlib.asynccontextmanager
async def _relay(plan: LabPlan, target: str | None) -> AsyncIterator[None]:
    if target is None:
        yield
        return
    async with TcpRelay(f"{plan.prefix}-kms", (str(KMS_ADDRESS.ip), MQTT_PORT),
                        parse_host_port(target)):
        yield


async def run_session(plan: LabPlan, settings: SessionSettings, procs: ProcessSet,
                      start_site: StartSite, stop: asyncio.Event,
                      say: Callable[[str], None], report: DemoReport) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await procs.start("kms-sim", f"{plan.prefix}-kms",
                      gateway_argv("kms-sim", *plan.kms_sim_args(), "--log-format", "json"),
                      plan.kms_log_path)
    await unless_stopped(stop, _kms_ready(plan, procs))
    report.kms_ready_s = loop.time() - t0
    say(f"KME network ready: every site reached its KMEs over mutual TLS "
        f"({report.kms_ready_s:.2f} s)")
    observer = LabObserver(plan)
    backup = None if settings.lab_only else _backup(plan)
    backup_task = None if backup is None else asyncio.create_task(backup.run(), name="backup")
    namespaces = [s.netns for s in plan.sites] + [f"{plan.prefix}-kms"]
    try:
        async with _relay(plan, settings.mqtt):
            if not settings.lab_only:
                before = await asyncio.to_thread(cpu.sample, namespaces, time.monotonic())
                for site in plan.sites:
                    await unless_stopped(stop, start_site(site, plan, procs))
                t1 = loop.time()
                await unless_stopped(stop, _wait_tunnels(plan, observer, procs))
                report.tunnels_ready_s = loop.time() - t1
                after = await asyncio.to_thread(cpu.sample, namespaces, time.monotonic())
                report.startup_cpu_s = cpu.shares(before, after)[1].get("daemons", 0.0)
                say(f"tunnels keyed ({report.tunnels_ready_s:.2f} s)")
            await _ping(plan, settings, procs, stop, say, report, observer, backup, namespaces)
    finally:
        if backup is not None and backup_task is not None:
            backup.stop()
            try:
                stats = await backup_task
            except Exception as exc:  # must not hide what ended the session
                report.errors.append(f"backup application failed: {exc}")
            else:
                report.backup_keys = stats.keys_taken
                report.notes.append(f"backup application: took {stats.keys_taken} keys from "
                                    f"the starved span in {stats.requests} looks")


async def _ping(plan: LabPlan, settings: SessionSettings, procs: ProcessSet,
                stop: asyncio.Event, say: Callable[[str], None], report: DemoReport,
                observer: LabObserver, backup: Backup | None, namespaces: list[str]) -> None:
    loop = asyncio.get_running_loop()
    pingers: list[tuple[TunnelReport, Pinger]] = []
    for t in plan.tunnels:
        hub, spoke = plan.by_name[t.hub], plan.by_name[t.spoke]
        target = str(spoke.wan.ip if settings.lab_only else t.address(t.spoke).ip)
        pingers.append((TunnelReport(t.name, t.hub, target, dataplane=t.dataplane),
                        Pinger(hub.netns, target, timeout=settings.ping_timeout)))
    for (_, p), state in zip(pingers, observer.tunnels.values(), strict=True):
        state.ping = p.stats
    tasks = [asyncio.create_task(p.run(), name=f"ping-{r.name}") for r, p in pingers]
    say("pinging " + ", ".join(f"{r.name} ({r.target})" for r, _ in pingers) + " at 20/s"
        + ("" if settings.duration is None else f" for {settings.duration:g} s")
        + f"; a reply within {settings.ping_timeout:g} s counts; Ctrl-C stops")
    report.ping_timeout_s = settings.ping_timeout
    t2 = loop.time()
    before = await asyncio.to_thread(cpu.sample, namespaces, time.monotonic())
    backup_until = t2 + BACKUP_AFTER_KEYED_S
    end = None if settings.duration is None else t2 + settings.duration

    def header() -> str:
        total = "" if settings.duration is None else f" of {settings.duration:g}"
        trusted = sum(1 for k in plan.kms.kmes if k.trusted_node)
        return (f"qkd-gateway demo ({plan.topology}), lab {plan.prefix}: "
                f"{loop.time() - t2:.0f}{total} s; {len(plan.sites)} sites, "
                f"{len(plan.kms.kmes)} KMEs ({trusted} trusted nodes), {len(plan.tunnels)} "
                f"tunnels, rekey every {plan.rekey_interval:g} s")

    view = LiveView(observer, header, since=time.time()) if settings.live else None
    next_progress = t2 + PROGRESS_EVERY_S
    try:
        with contextlib.ExitStack() as stack:
            if view is not None:
                stack.enter_context(view)
            while not stop.is_set() and (end is None or loop.time() < end):
                check_alive(procs)
                if backup is not None and loop.time() >= backup_until:
                    backup.stop()
                await observer.tick(loop.time(), daemons=not settings.lab_only)
                if view is not None:
                    view.update()
                elif loop.time() >= next_progress:
                    say(progress_line(observer, loop.time() - t2, settings.lab_only))
                    next_progress += PROGRESS_EVERY_S
                wait = TICK_S if end is None else max(0.0, min(TICK_S, end - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
    except LabProcessError as exc:
        report.errors.append(str(exc))
    finally:
        report.duration_s = loop.time() - t2
        for _, p in pingers:
            p.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    after = await asyncio.to_thread(cpu.sample, namespaces, time.monotonic())
    report.cpu, report.cpu_seconds = cpu.shares(before, after)
    for (tr, _), st in zip(pingers, results, strict=True):
        if isinstance(st, BaseException):
            report.errors.append(f"{tr.name}: pinger failed: {st}")
            continue
        tr.sent, tr.received, tr.lost, tr.late = st.sent, st.received, st.lost, st.late
        tr.rtt_avg_ms = st.rtt_avg_ms
    report.tunnels = [tr for tr, _ in pingers]
    if not settings.lab_only:
        await observer.tick(loop.time(), look_now=True)  # one last look at everything
        for tr, state in zip(report.tunnels, observer.tunnels.values(), strict=True):
            await _finish_tunnel(plan, observer, state, tr)
    if plan.topology == "ronaqci":
        report.picture = _picture(plan, settings, observer, report)


async def _finish_tunnel(plan: LabPlan, observer: LabObserver, state: TunnelState,
                         tr: TunnelReport) -> None:
    t = state.plan
    tr.rotations = state.rotations
    tr.paths = state.paths
    tr.keys_installed = state.status("keys_installed")
    tr.achieved = state.status("achieved")
    if t.dataplane == "wireguard":
        tr.handshakes, tr.fresh_handshakes = state.in_use.handshakes, state.in_use.fresh
        tr.psk_in_use_epoch = state.in_use.epoch
        hub, spoke = plan.by_name[t.hub], plan.by_name[t.spoke]
        tr.psk_match = await psk_matches(hub.netns, t.interface(t.hub),
                                         spoke.netns, t.interface(t.spoke))
    else:
        hub, spoke = plan.by_name[t.hub], plan.by_name[t.spoke]
        tr.esp_directions = await esp_keys_match(((hub.name, hub.netns, str(hub.wan.ip)),
                                                  (spoke.name, spoke.netns, str(spoke.wan.ip))))
        tr.esp_outbound_sas = len(state.esp_spis)
    if t.name != plan.starved_tunnel:
        return
    tr.starved = True
    events = observer.alarms("kms_low_stock", t.name)
    raises = [e.time for e in events if e.event == "alarm_raised"]
    tr.alarm_raised = bool(raises)
    last: dict[str, str] = {}
    for e in events:
        last[e.site] = e.event
    tr.alarm_cleared = bool(last) and all(v == "alarm_cleared" for v in last.values())
    clears = [e.time for e in events if e.event == "alarm_cleared"]
    if raises:
        start = min(raises) - 1.0
        stop = (max(clears) + 1.0) if tr.alarm_cleared and clears else float("inf")
        times = sorted(observer.both_ends(t).values())
        gaps = [b - a for a, b in itertools.pairwise(times) if a >= start and b <= stop]
        tr.longest_low_gap_s = max(gaps, default=None)


def _picture(plan: LabPlan, settings: SessionSettings, observer: LabObserver,
             report: DemoReport) -> Path | None:
    path = settings.picture or Path(tempfile.gettempdir()) / f"qkd-demo-{plan.prefix}.svg"
    lines = []
    for tr in report.tunnels:
        hs = "" if tr.handshakes is None else (f", {tr.fresh_handshakes}/{tr.handshakes} "
                                               "handshakes fresh")
        nets = " + ".join(tr.paths) or "-"
        lines.append(TunnelLine(tr.name, f"key from {nets}; {tr.rotations} rotations{hs}; "
                                f"{tr.sent} pings, {tr.lost} lost",
                                not tr.problems(report.lab_only, report.rekey_interval,
                                                report.clear_checked)))
    low = plan.kms_settings.low_stock or 0
    try:
        return write_picture(
            path, title=f"RoNaQCI demo, lab {plan.prefix}: QKD links coloured by key stock at "
                        f"the end ({report.duration_s:.0f} s run)",
            kms=plan.kms, places=PLACES, stock=observer.kms_log.stock,
            lowest=observer.kms_log.lowest, low_stock=low, tunnels=lines)
    except OSError as exc:
        report.notes.append(f"picture not written: {exc}")
        return None
