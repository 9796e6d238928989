"""The demo's verdict: per tunnel pings sent/lost, rotations both ends logged, keys matching,
keys in use, and for the link deliberately short of key, a rotation that stretched and an alarm
that cleared.

The demo exits 0 only if every tunnel carried pings without losing one, rotated at least
:data:`MIN_ROTATIONS` times and ends with the same keys at both ends (WireGuard: the preshared
key, ``wg show``; ESP: per direction, the SA's SPI and key, ``ip xfrm state``, and the hub's
kernel switched outbound SAs at least ``MIN_ROTATIONS - 1`` times); and, when the
topology has a starved link (ronaqci), if that tunnel raised ``kms_low_stock``, rotated at
intervals longer than :data:`STRETCH_FACTOR` times the configured one while the alarm stood, and
cleared the alarm again. The clear needs time (the gateway re-reads KMS stock every 30 s,
:data:`KMS_STATUS_INTERVAL_S`): a run shorter than :meth:`DemoReport.clear_bound_s` does not
check it and says so. In ``lab_only`` mode (no daemons: the lab checks itself) pings go to the
peers' WAN addresses and only the ping and KMS checks apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.demo.espstate import DirectionCheck
from gateway.kms.pool import DEFAULT_STATUS_INTERVAL

__all__ = ["KMS_STATUS_INTERVAL_S", "MIN_ROTATIONS", "STRETCH_FACTOR", "DemoReport",
           "TunnelReport"]

MIN_ROTATIONS = 3  # the bar: the first key and two rotations after it prove the schedule
# Jitter only ever shortens an interval (gateway.daemon.schedule), so a gap 20 % longer than the
# configured interval is a stretch, not noise.
STRETCH_FACTOR = 1.2
# How often a gateway re-reads stored_key_count (its key pools' status polls).
KMS_STATUS_INTERVAL_S = DEFAULT_STATUS_INTERVAL
# Slack for one rekey exchange and the daemons' logging after the stretched interval ends.
_CLEAR_SLACK_S = 5.0


@dataclass
class TunnelReport:
    """One tunnel (or, in lab-only mode, one WAN path) in the report."""

    name: str
    source: str  # site that pings
    target: str  # address pinged
    sent: int = 0
    received: int = 0
    lost: int = 0
    late: int = 0
    rtt_avg_ms: float = 0.0
    rotations: int = 0
    psk_match: bool | None = None  # None: not checked (lab-only)
    dataplane: str = "wireguard"
    paths: dict[str, list[str]] = field(default_factory=dict)  # KME network -> places crossed
    keys_installed: int | None = None  # the hub daemon's count, when it reports one
    handshakes: int | None = None  # seen by the demo with `wg show` (None: not WireGuard)
    fresh_handshakes: int | None = None
    psk_in_use_epoch: int | None = None
    achieved: str | None = None
    starved: bool = False  # this tunnel crosses the link deliberately short of key
    alarm_raised: bool = False
    alarm_cleared: bool = False
    longest_low_gap_s: float | None = None  # longest gap between rotations while low
    esp_directions: list[DirectionCheck] | None = None  # ESP: both directions compared
    esp_outbound_sas: int | None = None  # ESP: outbound SAs the hub's kernel went through

    @property
    def keys_match(self) -> bool | None:
        """Both ends hold the same keys (None: not compared)."""
        if self.dataplane == "esp":
            return None if not self.esp_directions else all(c.ok for c in self.esp_directions)
        return self.psk_match

    @property
    def kernel_rollovers(self) -> int | None:
        """ESP: outbound SA switches seen in the hub's kernel (the first SA is no rollover)."""
        return None if self.esp_outbound_sas is None else max(0, self.esp_outbound_sas - 1)

    def problems(self, lab_only: bool, rekey_interval: float = 0.0,
                 clear_checked: bool = True) -> list[str]:
        found = []
        if self.sent == 0:
            found.append(f"{self.name}: no ping was sent")
        if self.lost:
            found.append(f"{self.name}: {self.lost} of {self.sent} pings lost")
        if lab_only:
            return found
        if self.rotations < MIN_ROTATIONS:
            found.append(f"{self.name}: {self.rotations} rotation(s) seen by both ends; "
                         f"need {MIN_ROTATIONS} (run longer than three --rekey-interval)")
        if self.dataplane == "esp":
            found += self._esp_problems()
        elif not self.psk_match:
            found.append(f"{self.name}: the two ends do not hold the same preshared key")
        if self.starved:
            found += self._starved_problems(rekey_interval, clear_checked)
        return found

    def _esp_problems(self) -> list[str]:
        if not self.esp_directions:
            return [f"{self.name}: the ESP keys were not compared"]
        found = [f"{self.name}: ESP {c.name}: {c.detail}" for c in self.esp_directions
                 if not c.ok]
        rolled = self.kernel_rollovers or 0
        if rolled < MIN_ROTATIONS - 1:
            found.append(f"{self.name}: the hub's kernel switched its outbound SA {rolled} "
                         f"time(s) (`ip xfrm state`); need {MIN_ROTATIONS - 1}")
        return found

    def _starved_problems(self, rekey_interval: float, clear_checked: bool) -> list[str]:
        if not self.alarm_raised:
            return [f"{self.name}: kms_low_stock was never raised: the starved link's stock "
                    "never looked low to the gateways"]
        found = []
        gap = self.longest_low_gap_s
        if gap is None or gap <= STRETCH_FACTOR * rekey_interval:
            shown = ("fewer than two rotations while it was low" if gap is None
                     else f"at most {gap:.1f} s between rotations")
            found.append(f"{self.name}: rotation did not stretch while the stock was low "
                         f"({shown}; configured {rekey_interval:g} s)")
        if clear_checked and not self.alarm_cleared:
            found.append(f"{self.name}: kms_low_stock was not cleared: the stock did not "
                         "recover (see kms-sim.log, kms_link_stock)")
        return found


@dataclass
class DemoReport:
    """Everything the demo measured. ``ok`` is the exit verdict."""

    prefix: str
    lab_only: bool
    topology: str = "star"
    rekey_interval: float = 0.0
    reject_after: float = 0.0
    duration_s: float = 0.0
    kms_ready_s: float = 0.0
    ping_timeout_s: float = 1.0  # a reply later than this counted as lost
    tunnels_ready_s: float = 0.0
    tunnels: list[TunnelReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # failures outside the tunnel checks
    cpu: dict[str, float] = field(default_factory=dict)  # process kind -> share of all cores
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    startup_cpu_s: float | None = None  # CPU the daemons used until every tunnel was keyed
    backup_keys: int | None = None  # keys the backup application took (ronaqci)
    picture: Path | None = None
    notes: list[str] = field(default_factory=list)

    def clear_bound_s(self) -> float:
        """Pinging time after which the starved tunnel's alarm must have cleared: the gateway's
        second stock reading (<= 30 s after the pools started, which is before the tunnels were
        keyed and the pings began) plus one fully stretched interval plus slack."""
        stretched = self.reject_after - 0.25 * (self.reject_after - self.rekey_interval)
        return KMS_STATUS_INTERVAL_S + stretched + _CLEAR_SLACK_S

    @property
    def clear_checked(self) -> bool:
        return self.duration_s >= self.clear_bound_s()

    @property
    def problems(self) -> list[str]:
        return [*self.errors, *(p for t in self.tunnels
                                for p in t.problems(self.lab_only, self.rekey_interval,
                                                    self.clear_checked))]

    @property
    def ok(self) -> bool:
        return bool(self.tunnels) and not self.problems

    def table(self) -> str:
        """The report as operators read it (fixed-width, one tunnel a line, then problems)."""
        width = max([len("tunnel"), *(len(t.name) for t in self.tunnels)])
        head = (f"{'tunnel':<{width}}  {'target':<15} {'sent':>7} {'lost':>6} {'late':>5} "
                f"{'rtt ms':>7} {'rotations':>9}  keys   {'handshakes':>10}")
        lines = [head, "-" * len(head)]
        for t in self.tunnels:
            match = t.keys_match
            keys = "-" if match is None else "match" if match else "DIFFER"
            rot = "-" if self.lab_only else str(t.rotations)
            hs = "-" if t.handshakes is None else f"{t.fresh_handshakes}/{t.handshakes} fresh"
            lines.append(f"{t.name:<{width}}  {t.target:<15} {t.sent:>7} {t.lost:>6} "
                         f"{t.late:>5} {t.rtt_avg_ms:>7.2f} {rot:>9}  {keys:<6} {hs:>10}")
        lines += self._paths() + self._esp() + self._starved()
        mode = "lab only (no daemons)" if self.lab_only else "daemons"
        lines.append(f"lab {self.prefix}, {mode}: pinged for {self.duration_s:.1f} s (a reply "
                     f"within {self.ping_timeout_s:g} s counts); KMS ready after "
                     f"{self.kms_ready_s:.2f} s")
        if not self.lab_only:
            lines.append(f"tunnels keyed after {self.tunnels_ready_s:.2f} s")
        if self.cpu:
            shares = ", ".join(f"{k} {v:.1%}" for k, v in self.cpu.items())
            lines.append(f"CPU while pinging (share of all cores): {shares}")
        if self.startup_cpu_s is not None:
            lines.append(f"daemons' CPU until every tunnel was keyed: {self.startup_cpu_s:.1f} s")
        lines += self.notes
        if self.picture is not None:
            lines.append(f"picture: {self.picture}")
        problems = self.problems
        lines += [f"FAIL {p}" for p in problems] if problems else ["PASS every check"]
        lines.append(self.verdict())
        return "\n".join(lines)

    def verdict(self) -> str:
        """One line: PASS/FAIL, tunnels by kind, keys equal at both ends, pings lost,
        rollovers (rotations both ends logged; ESP: also those the hub's kernel went through)."""
        esp = [t for t in self.tunnels if t.dataplane == "esp"]
        wg = [t for t in self.tunnels if t.dataplane != "esp"]
        sent = sum(t.sent for t in self.tunnels)
        lost = sum(t.lost for t in self.tunnels)
        head = f"verdict: {'PASS' if self.ok else 'FAIL'}: {len(self.tunnels)} tunnel(s)"
        kinds = ", ".join(k for k in (f"{len(esp)} ESP" if esp else "",
                                      f"{len(wg)} WireGuard" if wg else "") if k)
        parts = [f"{head} ({kinds or 'none'})"]
        if not self.lab_only:
            keys = []
            if esp:
                dirs = [c for t in esp for c in t.esp_directions or []]
                keys.append(f"ESP {sum(c.ok for c in dirs)} of {2 * len(esp)} directions "
                            "(ip xfrm state)")
            if wg:
                keys.append(f"WireGuard {sum(bool(t.psk_match) for t in wg)} of {len(wg)} "
                            "(wg show)")
            parts.append("keys equal at both ends: " + ", ".join(keys))
        parts.append(f"{lost} of {sent} pings lost")
        if not self.lab_only:
            rollovers = f"{sum(t.rotations for t in self.tunnels)} rotations"
            if esp:
                rollovers += (f" ({sum(t.kernel_rollovers or 0 for t in esp)} ESP rollovers "
                              "in the hubs' kernels)")
            parts.append(rollovers)
        return "; ".join(parts)

    def _paths(self) -> list[str]:
        lines = []
        for t in self.tunnels:
            for net, places in t.paths.items():
                via = ", ".join(places[1:-1]) or "direct link"
                lines.append(f"  {t.name} key path {net}: trusted nodes {via}")
            if t.keys_installed is not None and t.handshakes is not None:
                lines.append(f"  {t.name}: {t.keys_installed} PSKs installed at the hub, "
                             f"{t.handshakes} WireGuard handshake(s) ({t.fresh_handshakes} "
                             f"under a PSK no earlier handshake used), PSK in use: epoch "
                             f"{t.psk_in_use_epoch if t.psk_in_use_epoch is not None else '-'}")
        return lines

    def _esp(self) -> list[str]:
        lines = []
        for t in self.tunnels:
            for c in t.esp_directions or []:
                lines.append(f"  {t.name} ESP {c.name}: {'ok' if c.ok else 'FAIL'}: {c.detail}")
            if t.esp_outbound_sas is not None:
                lines.append(f"  {t.name}: {t.esp_outbound_sas} outbound SAs seen in "
                             f"{t.source}'s kernel ({t.kernel_rollovers} rollovers)")
        return lines

    def _starved(self) -> list[str]:
        lines = []
        for t in self.tunnels:
            if not t.starved:
                continue
            gap = "-" if t.longest_low_gap_s is None else f"{t.longest_low_gap_s:.1f} s"
            clear = ("cleared" if t.alarm_cleared else "not cleared") if self.clear_checked \
                else (f"clearing not checked: the run pinged {self.duration_s:.0f} s, the "
                      f"gateways re-read KMS stock every {KMS_STATUS_INTERVAL_S:.0f} s, so "
                      f"a clear needs >= {self.clear_bound_s():.0f} s")
            lines.append(f"  {t.name} (starved link): kms_low_stock "
                         f"{'raised' if t.alarm_raised else 'never raised'}, longest gap "
                         f"between rotations while low {gap} (configured "
                         f"{self.rekey_interval:g} s), alarm {clear}")
        return lines
