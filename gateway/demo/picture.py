"""The six-city graph as an SVG picture: places where they are, links coloured by key stock.

Drawn from the plan (places, links, lengths, rates) and from what the run measured (each link's
stock at the end and the lowest it reached, per tunnel rotations and pings). Longitude and
latitude are projected equirectangularly around the map's mean latitude: good enough for a
country 500 km across. Plain SVG 1.1, no script, no external resource; text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path

from gateway.demo.keyrate import LatLon
from gateway.demo.kmsplan import KmsPlan

__all__ = ["TunnelLine", "stock_colour", "write_picture"]

WIDTH, HEIGHT, MARGIN = 1220, 720, 70
MAP_RIGHT = 800  # right of it: the table of links
MAP_BOTTOM = 560  # below it: legend and the tunnels' figures
GREEN, AMBER, RED, GREY = "#2e9d4b", "#e0a100", "#d23b2f", "#9a9a9a"
# The second network's links are drawn dashed, so the two paths of one tunnel are told apart.
DASH = {0: "", 1: ' stroke-dasharray="10 7"'}


@dataclass(frozen=True)
class TunnelLine:
    """One line of the figures under the map."""

    name: str
    text: str
    ok: bool


def stock_colour(keys: int | None, low_stock: int, capacity: int) -> str:
    """Red below the gateways' low-stock threshold, amber below a quarter full, else green;
    grey when unknown."""
    if keys is None:
        return GREY
    if keys < low_stock:
        return RED
    if keys < capacity / 4:
        return AMBER
    return GREEN


def _projector(places: Mapping[str, LatLon]) -> dict[str, tuple[float, float]]:
    lats = [p[0] for p in places.values()]
    lons = [p[1] for p in places.values()]
    kx = math.cos(math.radians(sum(lats) / len(lats)))
    span_x = (max(lons) - min(lons)) * kx or 1.0
    span_y = (max(lats) - min(lats)) or 1.0
    scale = min((MAP_RIGHT - 2 * MARGIN) / span_x, (MAP_BOTTOM - 2 * MARGIN) / span_y)
    return {name: (MARGIN + (lon - min(lons)) * kx * scale,
                   MARGIN + (max(lats) - lat) * scale)
            for name, (lat, lon) in places.items()}


def _text(x: float, y: float, body: str, *, size: int = 12, weight: str = "normal",
          colour: str = "#222", anchor: str = "start", italic: bool = False) -> str:
    style = ' font-style="italic"' if italic else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" '
            f'fill="{colour}" text-anchor="{anchor}"{style}>{escape(body)}</text>')


def _badge(x: float, y: float, body: str, colour: str) -> str:
    """The stock of a link on the map: a small white label in the link's colour."""
    w = 7 * len(body) + 8
    return (f'<rect x="{x - w / 2:.1f}" y="{y - 8:.1f}" width="{w}" height="15" rx="4" '
            f'fill="white" stroke="{colour}"/>'
            + _text(x, y + 4, body, size=10, weight="bold", colour=colour, anchor="middle"))


def write_picture(path: Path, *, title: str, kms: KmsPlan, places: Mapping[str, LatLon],
                  stock: Mapping[tuple[str, str], int], lowest: Mapping[tuple[str, str], int],
                  low_stock: int, tunnels: list[TunnelLine]) -> Path:
    """Write the SVG to ``path`` and return it. ``stock``/``lowest``: link name (sorted KME
    IDs) -> keys at the end / the fewest seen during the run."""
    xy = _projector(places)
    networks = kms.networks()
    badges: list[str] = []
    rows: list[tuple[str, str, str, str, str, str, str]] = []
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fbfbf8"/>',
           _text(MARGIN - 40, 32, title, size=17, weight="bold")]
    for link in kms.links:
        a, b = kms.by_id[link.a], kms.by_id[link.b]
        (x1, y1), (x2, y2) = xy[a.place], xy[b.place]
        keys = stock.get(link.name)
        colour = stock_colour(keys, low_stock, kms.max_key_count)
        rate = link.rate_bps or kms.default_rate_bps
        width = 2.0 + 1.5 * math.log10(max(10.0, rate) / 10.0)
        dash = DASH.get(networks.index(a.network), "")
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                   f'stroke="{colour}" stroke-width="{width:.1f}" stroke-linecap="round"{dash}/>')
        low = lowest.get(link.name)
        if low is not None and low < low_stock:
            # Below the gateways' threshold at some point of the run: a red edge, whatever the
            # stock at the end.
            out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                       f'stroke="{RED}" stroke-width="{width + 5:.1f}" stroke-opacity="0.35" '
                       'stroke-linecap="round"/>')
        badges.append(_badge((x1 + x2) / 2, (y1 + y2) / 2, "?" if keys is None else str(keys),
                             colour))
        rows.append((f"{a.place} - {b.place}", f"{link.length_km or 0:.0f} km",
                     f"{rate / 1000:.1f}", "?" if keys is None else str(keys),
                     "-" if low is None else str(low), colour, a.network))
    drawn: set[str] = set()
    for kme in kms.kmes:
        if kme.place in drawn:
            continue
        drawn.add(kme.place)
        x, y = xy[kme.place]
        if kme.site is not None:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="#1f3b73" '
                       'stroke="white" stroke-width="2"/>')
            out.append(_text(x + 14, y + 5, kme.place, size=14, weight="bold"))
        else:
            out.append(f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" '
                       'fill="white" stroke="#444" stroke-width="2"/>')
            out.append(_text(x + 9, y + 4, kme.place, size=11, colour="#444", italic=True))
    out += badges
    out += _table(rows, low_stock)
    out += _legend(networks, low_stock)
    y = MAP_BOTTOM + 62
    for line in tunnels:
        colour = "#222" if line.ok else RED
        out.append(_text(MARGIN - 40, y, f"{line.name}: {line.text}", size=11, colour=colour))
        y += 16
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
    return path


def _table(rows: list[tuple[str, str, str, str, str, str, str]], low_stock: int) -> list[str]:
    x, y = MAP_RIGHT + 10, 70
    heads = ("QKD link", "fibre", "kbit/s", "keys", "min")
    out = [_text(x + c, y, h, size=11, weight="bold", anchor="start" if i == 0 else "end")
           for i, (c, h) in enumerate(zip((0, 245, 300, 345, 390), heads, strict=True))]
    network = ""
    for name, km, rate, keys, low, colour, net in rows:
        if net != network:
            network = net
            y += 22
            out.append(_text(x, y, f"network {net}", size=11, weight="bold", colour="#1f3b73"))
        y += 16
        out.append(_text(x, y, name, size=10))
        low_colour = RED if low.isdigit() and int(low) < low_stock else "#222"
        for c, value, tint in zip((245, 300, 345, 390), (km, rate, keys, low),
                                  ("#222", "#222", colour, low_colour), strict=True):
            out.append(_text(x + c, y, value, size=10, anchor="end", colour=tint))
    return out


def _legend(networks: list[str], low_stock: int) -> list[str]:
    x, y = MARGIN - 40, MAP_BOTTOM + 8
    items = [(GREEN, "stock >= a quarter of the store"), (AMBER, "stock below a quarter"),
             (RED, f"stock below {low_stock} keys (gateways stretch rotation); a pale red "
                   "edge: it was, during the run")]
    out = []
    for i, (colour, text) in enumerate(items):
        lx = x + [0, 230, 430][i]
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" '
                   f'stroke="{colour}" stroke-width="5"/>')
        out.append(_text(lx + 30, y + 4, text, size=11))
    y += 22
    out.append(f'<circle cx="{x + 6}" cy="{y}" r="6" fill="#1f3b73"/>')
    out.append(_text(x + 18, y + 4, "city: gateway + its KME", size=11))
    out.append(f'<rect x="{x + 200}" y="{y - 5}" width="10" height="10" fill="white" '
               'stroke="#444" stroke-width="2"/>')
    out.append(_text(x + 216, y + 4, "trusted node (holds relayed keys in the clear)", size=11))
    for i, net in enumerate(networks[:2]):
        lx = x + 560 + i * 170
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="#444" '
                   f'stroke-width="3"{DASH.get(i, "")}/>')
        out.append(_text(lx + 30, y + 4, f"network {net}", size=11))
    return out
