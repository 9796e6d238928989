"""Everything the demo watches while the lab runs, gathered into one snapshot per second.

Sources, each read the way an operator could read it:

* the daemons' JSON logs (:class:`~gateway.demo.rotations.RotationReader`): rotations and their
  times, alarms, notable events;
* the daemons' control sockets (:func:`~gateway.demo.statusclient.daemon_status`): achieved
  policy, key age, keys installed, KMS stock, next rekey, WireGuard handshakes as the daemon
  counts them (fields a daemon does not report are shown as ``-``);
* the KME network's log (:class:`KmsLogReader`): every link's stock and rate once a second
  (``kms_link_stock``), and the KME path of every key issued (``kme_keys_issued``);
* ``wg show IF latest-handshakes`` in the hub's namespace (:mod:`gateway.demo.handshakes`);
* ``ip -s xfrm state`` in the hub's namespace of every ESP tunnel, once a second: the outbound
  SPIs the kernel went through (:mod:`gateway.demo.espstate`);
* the pingers' counters.

Nothing here changes the lab; every read has a timeout, and a source that fails is shown as
unknown rather than ending the run.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.demo.espstate import read_states
from gateway.demo.handshakes import HandshakeLog, InUse, latest_handshake
from gateway.demo.pinger import PingStats
from gateway.demo.rotations import LogEvent, RotationReader
from gateway.demo.sites import LabPlan, TunnelPlan
from gateway.demo.statusclient import daemon_status
from gateway.demo.statusclient import field as status_field
from gateway.kms.sim.errors import KmeError

__all__ = ["HANDSHAKE_EVERY_S", "KmsLogReader", "LabObserver", "TunnelState"]

HANDSHAKE_EVERY_S = 2.0  # WireGuard handshakes at most every 5 s: looking every 2 s misses none


class KmsLogReader:
    """Follow ``kms-sim.log``: the latest stock of every link, the lowest seen, the paths."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stock: dict[tuple[str, str], int] = {}
        self.rate: dict[tuple[str, str], float] = {}
        self.lowest: dict[tuple[str, str], int] = {}
        self.paths: set[tuple[str, ...]] = set()
        self.reports = 0
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if record.get("event") == "kms_link_stock":
                self._stock(record.get("links"))
            elif record.get("event") == "kme_keys_issued" and isinstance(record.get("path"), list):
                self.paths.add(tuple(str(k) for k in record["path"]))

    def _stock(self, links: Any) -> None:
        if not isinstance(links, list):
            return
        self.reports += 1
        for item in links:
            if not isinstance(item, dict) or not isinstance(item.get("keys"), int):
                continue
            name = tuple(item.get("link", ()))
            if len(name) != 2:
                continue
            key = (str(name[0]), str(name[1]))
            self.stock[key] = item["keys"]
            self.rate[key] = float(item.get("rate_bps", 0.0))
            self.lowest[key] = min(self.lowest.get(key, item["keys"]), item["keys"])


@dataclass
class TunnelState:
    """One tunnel as the live view and the report show it."""

    plan: TunnelPlan
    paths: dict[str, list[str]]  # KME network -> the places its keys cross (ends included)
    rotations: int = 0
    ping: PingStats | None = None
    hub_status: dict[str, Any] | None = None  # this tunnel's entry in the hub daemon's status
    in_use: InUse = field(default_factory=lambda: InUse(0, 0, None, None))
    low_stock: bool = False
    esp_spis: list[int] = field(default_factory=list)  # ESP: hub's outbound SPIs, first seen first

    @property
    def trusted_nodes(self) -> dict[str, list[str]]:
        return {net: places[1:-1] for net, places in self.paths.items()}

    def status(self, *path: str) -> Any:
        """A field of this tunnel's hub status (None if the daemon does not report it)."""
        return status_field({"tunnels": {"t": self.hub_status}}, "t", *path)


class LabObserver:
    """Polls every source of a running lab; :meth:`tick` once a second."""

    def __init__(self, plan: LabPlan) -> None:
        self.plan = plan
        self.readers = {s.name: RotationReader(s.log_path, s.name) for s in plan.sites}
        self.kms_log = KmsLogReader(plan.kms_log_path)
        self.statuses: dict[str, dict[str, Any] | None] = {s.name: None for s in plan.sites}
        self.handshakes = {t.name: HandshakeLog() for t in plan.tunnels}
        self.tunnels = {t.name: TunnelState(t, self._paths(t)) for t in plan.tunnels}
        self._last_handshake_look = 0.0

    def _paths(self, t: TunnelPlan) -> dict[str, list[str]]:
        try:
            return {net: [k.place for k in self.plan.kms.path(net, t.hub, t.spoke)]
                    for net in t.kms}
        except (KeyError, KmeError):  # a plan whose tunnel names a network it lacks
            return {net: [t.hub, "?", t.spoke] for net in t.kms}

    # -- reading -------------------------------------------------------------------------------
    def both_ends(self, t: TunnelPlan) -> dict[int, float]:
        """Epochs both ends logged -> when the later end logged it (Unix seconds)."""
        hub = self.readers[t.hub]
        spoke = self.readers[t.spoke]
        hub.poll()
        spoke.poll()
        common = hub.rotations(t.name) & spoke.rotations(t.name)
        ht, st = hub.times.get(t.name, {}), spoke.times.get(t.name, {})
        return {e: max(ht.get(e, 0.0), st.get(e, 0.0)) for e in common}

    def events(self, limit: int = 6, since: float = 0.0) -> list[LogEvent]:
        """The latest notable events of every daemon. Before ``since`` (Unix seconds) only the
        ``kms_low_stock`` alarms count: start-up's own churn (every tunnel starts closed and
        clears ``tunnel_key_expired`` with its first key) would hide what matters."""
        merged = sorted((e for r in self.readers.values() for e in r.events
                         if e.time >= since or e.fields.get("alarm") == "kms_low_stock"),
                        key=lambda e: e.time)
        return merged[-limit:]

    def alarms(self, name: str, tunnel: str) -> list[LogEvent]:
        """Raises and clears of alarm ``name`` for ``tunnel`` at any site, in time order."""
        found = [e for r in self.readers.values() for e in r.alarms
                 if e.fields.get("alarm") == name and e.fields.get("subject") == tunnel]
        return sorted(found, key=lambda e: e.time)

    async def _statuses(self) -> None:
        sites = list(self.plan.sites)
        answers = await asyncio.gather(
            *(daemon_status(s.directory / "control.sock") for s in sites))
        for site, answer in zip(sites, answers, strict=True):
            if answer is not None:
                self.statuses[site.name] = answer

    async def _handshakes(self) -> None:
        wg = [t for t in self.plan.tunnels if t.dataplane == "wireguard"]
        times = await asyncio.gather(*(latest_handshake(self.plan.by_name[t.hub].netns,
                                                        t.interface(t.hub)) for t in wg))
        for t, when in zip(wg, times, strict=True):
            self.handshakes[t.name].observe(when)

    async def _esp(self) -> None:
        esp = [t for t in self.plan.tunnels if t.dataplane == "esp"]
        hubs = sorted({t.hub for t in esp})
        found = await asyncio.gather(*(read_states(self.plan.by_name[h].netns) for h in hubs))
        states = dict(zip(hubs, found, strict=True))
        for t in esp:
            hub, spoke = self.plan.by_name[t.hub], self.plan.by_name[t.spoke]
            seen = self.tunnels[t.name].esp_spis
            for sa in states[t.hub] or []:
                if (sa.keyed and sa.src == str(hub.wan.ip) and sa.dst == str(spoke.wan.ip)
                        and sa.spi not in seen):
                    seen.append(sa.spi)

    async def tick(self, now: float, *, daemons: bool = True, look_now: bool = False) -> None:
        """One look at every source (``now``: the event loop's clock); ``look_now`` also reads
        the handshakes even if the last look was less than :data:`HANDSHAKE_EVERY_S` ago."""
        self.kms_log.poll()
        if daemons:
            await self._statuses()
            if look_now or now - self._last_handshake_look >= HANDSHAKE_EVERY_S:
                self._last_handshake_look = now
                await self._handshakes()
            await self._esp()
        for name, state in self.tunnels.items():
            t = state.plan
            both = self.both_ends(t)
            state.rotations = len(both)
            state.hub_status = (self.statuses.get(t.hub) or {}).get("tunnels", {}).get(name)
            state.in_use = self.handshakes[name].in_use(both)
            last: dict[str, str] = {}
            for event in self.alarms("kms_low_stock", name):
                last[event.site] = event.event
            state.low_stock = "alarm_raised" in last.values()
