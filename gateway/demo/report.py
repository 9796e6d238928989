"""The demo's verdict: per tunnel pings sent/lost, rotations both ends logged, keys matching.

The demo exits 0 only if every tunnel carried pings without losing one, rotated at least
:data:`MIN_ROTATIONS` times and ends with the same preshared key on both ends. In ``lab_only``
mode (no daemons: the lab checks itself) pings go to the peers' WAN addresses and only the ping
and KMS checks apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MIN_ROTATIONS", "DemoReport", "TunnelReport"]

MIN_ROTATIONS = 2  # one rotation could be the initial key; two prove the schedule runs


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

    def problems(self, lab_only: bool) -> list[str]:
        found = []
        if self.sent == 0:
            found.append(f"{self.name}: no ping was sent")
        if self.lost:
            found.append(f"{self.name}: {self.lost} of {self.sent} pings lost")
        if not lab_only:
            if self.rotations < MIN_ROTATIONS:
                found.append(f"{self.name}: {self.rotations} rotation(s) seen by both ends; "
                             f"need {MIN_ROTATIONS} (run longer than two --rekey-interval)")
            if not self.psk_match:
                found.append(f"{self.name}: the two ends do not hold the same preshared key")
        return found


@dataclass
class DemoReport:
    """Everything the demo measured. ``ok`` is the exit verdict."""

    prefix: str
    lab_only: bool
    duration_s: float = 0.0
    kms_ready_s: float = 0.0
    tunnels_ready_s: float = 0.0
    tunnels: list[TunnelReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # failures outside the tunnel checks

    @property
    def problems(self) -> list[str]:
        return [*self.errors, *(p for t in self.tunnels for p in t.problems(self.lab_only))]

    @property
    def ok(self) -> bool:
        return bool(self.tunnels) and not self.problems

    def table(self) -> str:
        """The report as operators read it (fixed-width, one tunnel a line, then problems)."""
        width = max([len("tunnel"), *(len(t.name) for t in self.tunnels)])
        head = (f"{'tunnel':<{width}}  {'target':<15} {'sent':>7} {'lost':>6} {'late':>5} "
                f"{'rtt ms':>7} {'rotations':>9}  keys")
        lines = [head, "-" * len(head)]
        for t in self.tunnels:
            keys = "-" if t.psk_match is None else ("match" if t.psk_match else "DIFFER")
            rot = "-" if self.lab_only else str(t.rotations)
            lines.append(f"{t.name:<{width}}  {t.target:<15} {t.sent:>7} {t.lost:>6} "
                         f"{t.late:>5} {t.rtt_avg_ms:>7.2f} {rot:>9}  {keys}")
        mode = "lab only (no daemons)" if self.lab_only else "daemons"
        lines.append(f"lab {self.prefix}, {mode}: pinged for {self.duration_s:.1f} s; KMS ready "
                     f"after {self.kms_ready_s:.2f} s")
        if not self.lab_only:
            lines.append(f"tunnels keyed after {self.tunnels_ready_s:.2f} s")
        problems = self.problems
        lines += [f"FAIL {p}" for p in problems] if problems else ["PASS every check"]
        return "\n".join(lines)
