"""What the operator sees while the demo runs: a live table on a terminal, plain lines otherwise.

On a TTY (:class:`LiveView`, rich): a header (lab, elapsed time, network size), one small table
per tunnel (as many side by side as the terminal is wide) and the latest events of every daemon,
redrawn every second. A tunnel's table:

====================  =====================================================================
line                  what it shows
====================  =====================================================================
title                 the two cities and the data plane; the frame turns yellow while the
                      KMS stock is low and red once a ping is lost
key from <network>    per KME network of the tunnel's key, the trusted nodes it crosses
policy                the configured mode and what the last rekey achieved (2 QKD + ML-KEM
                      + X25519: one QKD key from each network, both post-quantum secrets)
rotations             epochs both ends logged (the verdict's count), the hub's epoch, the age
                      of its key, the PSKs it installed
in use                WireGuard handshakes the demo saw (fresh/total) and the epoch and age of
                      the PSK the latest one used: what actually protects the traffic; and the
                      daemon's own count
KMS stock             stored_key_count per KMS as the hub last read it, the next rotation, and
                      "stretched" while kms_low_stock stands
pings                 sent, lost, mean round trip
====================  =====================================================================

Elsewhere (a pipe, CI): :func:`progress_line` every 10 s on stderr, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.columns import Columns
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gateway.demo.observe import LabObserver, TunnelState

__all__ = ["LiveView", "achieved_short", "progress_line", "tunnel_fields"]


def _num(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _stock(t: TunnelState, sep: str = "\n") -> str:
    stock = t.status("kms_stock")
    if not isinstance(stock, dict):
        return "-"
    parts = [f"{net} {_num(stock.get(net))}" for net in t.plan.kms]
    return sep.join(parts) + (" LOW" if t.low_stock else "")


def achieved_short(achieved: Any) -> str:
    """``qkd:a+qkd:b+ml-kem-768+x25519`` -> ``2 QKD + ML-KEM + X25519``."""
    if not isinstance(achieved, str) or not achieved:
        return "-"
    parts = achieved.split("+")
    qkd = sum(1 for p in parts if p.startswith("qkd:"))
    names = {"ml-kem-768": "ML-KEM", "x25519": "X25519"}
    rest = [names.get(p, p) for p in parts if not p.startswith("qkd:")]
    return " + ".join(([f"{qkd} QKD"] if qkd else []) + rest)


def tunnel_fields(t: TunnelState) -> list[tuple[str, str]]:
    """The lines of one tunnel's table, as (label, value) strings (also used by tests)."""
    fields = [(f"via {net}", " > ".join(nodes) or "direct link")
              for net, nodes in t.trusted_nodes.items()]
    fields.append(("policy", f"{t.status('mode') or '-'}: "
                             f"{achieved_short(t.status('achieved'))}"))
    fields.append(("rotations", f"{t.rotations} (epoch {_num(t.status('epoch'))}), key "
                                f"{_num(t.status('key_age_s'), '{:.0f}')} s old"))
    use = t.in_use
    installed = t.status("keys_installed")
    if t.plan.dataplane == "wireguard":
        age = None if use.since is None else max(0.0, time.time() - use.since)
        psks = "PSK" if installed == 1 else "PSKs"
        fields.append(("installed", f"{_num(installed)} {psks}; in use: epoch {_num(use.epoch)}, "
                                    f"{_num(age, '{:.0f}')} s old"))
        text = f"{use.handshakes}, {use.fresh} fresh"
        wg = t.status("wg")
        if isinstance(wg, dict):
            text += (f" (daemon: {_num(wg.get('handshakes'))}, "
                     f"{_num(wg.get('fresh_handshakes'))} fresh)")
        fields.append(("handshakes", text))
    else:
        fields.append(("installed", f"{_num(installed)} SA pairs, in use at once"))
    fields.append(("KMS stock", _stock(t, ", ")))
    nxt = t.status("next_rekey_s")
    fields.append(("next rekey", f"in {_num(nxt, '{:.0f}')} s"
                   + (", stretched (kms_low_stock)" if t.low_stock else "")))
    ping = t.ping
    fields.append(("pings", "-" if ping is None else
                   f"{ping.sent} sent, {ping.lost} lost, {ping.rtt_avg_ms:.2f} ms"))
    return fields


def _panel(t: TunnelState) -> Panel:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in tunnel_fields(t):
        style = "bold red" if label in ("KMS stock", "next rekey") and t.low_stock else ""
        grid.add_row(label, Text(value, style=style))
    plane = t.status("dataplane") or t.plan.dataplane
    lost = t.ping is not None and t.ping.lost > 0
    return Panel(grid, title=f"[bold]{t.plan.hub} - {t.plan.spoke}[/] ({plane})",
                 title_align="left", width=_PANEL_WIDTH,
                 border_style="red" if lost else "yellow" if t.low_stock else "green")


_PANEL_WIDTH = 58  # two side by side on a 120-column terminal


def progress_line(observer: LabObserver, elapsed: float, lab_only: bool) -> str:
    """One line for logs: per tunnel pings, rotations, and the stock when it is low."""
    parts = []
    for t in observer.tunnels.values():
        ping = t.ping
        sent, lost = (ping.sent, ping.lost) if ping else (0, 0)
        text = f"{t.plan.name}: {sent} sent, {lost} lost"
        if not lab_only:
            text += f", {t.rotations} rotations"
            if t.low_stock:
                text += f", KMS stock {_stock(t, ' ')}"
        parts.append(text)
    return f"{elapsed:.0f} s: " + "; ".join(parts)


class LiveView:
    """The rich live display; ``with LiveView(...) as view: view.update(...)``."""

    def __init__(self, observer: LabObserver, header: Callable[[], str],
                 console: Console | None = None, since: float = 0.0) -> None:
        self.observer = observer
        self.header = header
        self.since = since  # Unix time the pings started: older events are start-up churn
        self.console = console or Console(stderr=False)
        self._live = Live(console=self.console, auto_refresh=False, transient=False)

    def render(self) -> Group:
        panels = Columns([_panel(t) for t in self.observer.tunnels.values()])
        events = Text()
        for event in self.observer.events(since=self.since):
            colour = {"alarm_raised": "red", "alarm_cleared": "green"}.get(event.event, "dim")
            events.append(event.text() + "\n", style=colour)
        return Group(Text(self.header(), style="bold"), panels,
                     Text("events", style="bold underline"), events)

    def update(self) -> None:
        self._live.update(self.render(), refresh=True)

    def say(self, line: str) -> None:
        self.console.print(f"demo: {line}", highlight=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._live.stop()
