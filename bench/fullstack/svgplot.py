"""A small dependency-free SVG line chart: panels side by side, log-scaled x (the tunnel count),
one line per system, missing points skipped. Used for docs/img/bench-fullstack.svg."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

__all__ = ["Panel", "Series", "render"]

W, H = 300, 230
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 40
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


@dataclass
class Series:
    label: str
    points: Sequence[tuple[float, float | None]]


@dataclass
class Panel:
    title: str
    y_label: str
    series: Sequence[Series]


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= v:
            return float(m * exp)
    return float(10 * exp)


def _fmt(v: float) -> str:
    return f"{v:g}" if v < 10000 else f"{v / 1000:g}k"


def _panel(p: Panel, x0: int) -> list[str]:
    pts = [(x, y) for s in p.series for x, y in s.points if y is not None]
    xs = sorted({x for x, _ in pts}) or [1.0]
    lx0, lx1 = math.log10(min(xs)), math.log10(max(xs))
    if lx1 == lx0:
        lx1 = lx0 + 1
    ymax = _nice_max(max((y for _, y in pts), default=1.0) * 1.05)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return x0 + LEFT + (math.log10(x) - lx0) / (lx1 - lx0) * pw

    def sy(y: float) -> float:
        return TOP + ph - y / ymax * ph

    out = [f'<text x="{x0 + W / 2}" y="16" text-anchor="middle" font-weight="bold">'
           f'{escape(p.title)}</text>',
           f'<rect x="{x0 + LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" '
           f'stroke="#888"/>']
    for i in range(5):
        y = ymax * i / 4
        out.append(f'<line x1="{x0 + LEFT}" x2="{x0 + LEFT + pw}" y1="{sy(y):.1f}" '
                   f'y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 + LEFT - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">'
                   f'{_fmt(y)}</text>')
    for x in xs:
        out.append(f'<text x="{sx(x):.1f}" y="{TOP + ph + 14}" text-anchor="middle">'
                   f'{_fmt(x)}</text>')
    out.append(f'<text x="{x0 + LEFT + pw / 2}" y="{H - 8}" text-anchor="middle">'
               f'tunnels / CHILD_SAs (log)</text>')
    out.append(f'<text transform="translate({x0 + 12},{TOP + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(p.y_label)}</text>')
    for k, s in enumerate(p.series):
        color = COLORS[k % len(COLORS)]
        xy = [(sx(x), sy(y)) for x, y in s.points if y is not None]
        if len(xy) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                       f'stroke-width="2"/>')
        for x, y in xy:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    return out


def render(panels: Sequence[Panel], caption: str) -> str:
    width = W * len(panels)
    body: list[str] = []
    for i, p in enumerate(panels):
        body += _panel(p, i * W)
    labels = [s.label for s in panels[0].series] if panels else []
    for k, label in enumerate(labels):
        x = 20 + k * 220
        body.append(f'<rect x="{x}" y="{H + 6}" width="14" height="4" '
                    f'fill="{COLORS[k % len(COLORS)]}"/>')
        body.append(f'<text x="{x + 20}" y="{H + 12}">{escape(label)}</text>')
    body.append(f'<text x="20" y="{H + 30}" fill="#555">{escape(caption)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H + 40}" '
            f'font-family="sans-serif" font-size="11">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")
