"""The live view's cells, the handshake attribution, and the picture, from known states."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from gateway.demo import plan_ronaqci
from gateway.demo.handshakes import HandshakeLog, InUse
from gateway.demo.observe import LabObserver
from gateway.demo.picture import GREEN, RED, TunnelLine, stock_colour, write_picture
from gateway.demo.pinger import PingStats
from gateway.demo.ronaqci import PLACES
from gateway.demo.view import LiveView, achieved_short, progress_line, tunnel_fields

pytestmark = pytest.mark.unit


def _observer(tmp_path: Path, with_status: bool) -> LabObserver:
    obs = LabObserver(plan_ronaqci("qgd1a", tmp_path, 5))
    for name, st in obs.tunnels.items():
        st.rotations = 7
        st.ping = PingStats("n", "10.77.1.2", sent=400, received=400, rtt_sum_ms=400 * 2.5)
        st.in_use = InUse(1, 1, 1, time.time() - 20)
        st.low_stock = name.endswith("constanta")
        if with_status:
            st.hub_status = {
                "mode": "qkd+pqc", "epoch": 11, "key_age_s": 2.4, "keys_installed": 7,
                "achieved": "+".join([f"qkd:{k}" for k in st.plan.kms] + ["ml-kem-768",
                                                                            "x25519"]),
                "dataplane": "wireguard", "next_rekey_s": 12.1 if st.low_stock else 4.2,
                "kms_stock": {k: 1 if st.low_stock else 252 for k in st.plan.kms},
                "wg": {"handshakes": 1, "fresh_handshakes": 1}}
    return obs


def test_cells_show_paths_stock_and_keys_in_use(tmp_path: Path) -> None:
    obs = _observer(tmp_path, with_status=True)
    cluj = dict(tunnel_fields(obs.tunnels["bucharest--cluj-napoca"]))
    assert cluj["via ronaqci"] == "pitesti > sibiu > alba-iulia"
    assert cluj["via ronaqci-2"] == "ploiesti > brasov > sighisoara > targu-mures"
    assert cluj["policy"] == "qkd+pqc: 2 QKD + ML-KEM + X25519"
    assert cluj["rotations"] == "7 (epoch 11), key 2 s old"
    assert cluj["installed"].startswith("7 PSKs; in use: epoch 1, 2") and "s old" in cluj["installed"]
    assert cluj["handshakes"] == "1, 1 fresh (daemon: 1, 1 fresh)"
    assert cluj["KMS stock"] == "ronaqci 252, ronaqci-2 252"
    low = dict(tunnel_fields(obs.tunnels["bucharest--constanta"]))
    assert low["KMS stock"] == "ronaqci 1 LOW"
    assert low["next rekey"] == "in 12 s, stretched (kms_low_stock)"
    line = progress_line(obs, 20.0, lab_only=False)
    assert line.startswith("20 s: bucharest--cluj-napoca: 400 sent, 0 lost, 7 rotations;")
    assert "bucharest--constanta: 400 sent, 0 lost, 7 rotations, KMS stock ronaqci 1 LOW" in line
    console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(LiveView(obs, lambda: "header", console).render())
    text = console.export_text()
    assert "bucharest - constanta (wireguard)" in text and "stretched" in text


def test_cells_degrade_without_the_daemons_newer_fields(tmp_path: Path) -> None:
    obs = _observer(tmp_path, with_status=False)
    fields = dict(tunnel_fields(obs.tunnels["bucharest--iasi"]))
    assert fields["policy"] == "-: -" and fields["KMS stock"] == "-"
    assert fields["rotations"] == "7 (epoch -), key - s old"
    assert fields["handshakes"] == "1, 1 fresh"  # the demo's own count, no daemon figure
    assert fields["next rekey"] == "in - s"
    assert achieved_short(None) == "-" and achieved_short("ml-kem-768+x25519") == \
        "ML-KEM + X25519"


def test_handshakes_are_attributed_to_the_key_both_ends_held() -> None:
    log = HandshakeLog()
    for when in (None, 100.0, 100.0, 99.0, 130.0, 250.0):
        log.observe(when)  # repeats and older readings are the same handshake
    assert log.times == [100.0, 130.0, 250.0]
    # epoch 1 in force at both ends from 90 s, epoch 2 from 100.4 s (the same second as the
    # first handshake: WireGuard's whole seconds attribute it to 2), epoch 3 from 200 s.
    use = log.in_use({1: 90.0, 2: 100.4, 3: 200.0})
    assert use == InUse(handshakes=3, fresh=2, epoch=3, since=200.0)
    # No rotation between two handshakes: the second one reuses the key, it is not fresh.
    assert log.in_use({1: 90.0}) == InUse(3, 1, 1, 90.0)
    assert HandshakeLog().in_use({1: 1.0}) == InUse(0, 0, None, None)


def test_picture_is_svg_with_links_coloured_by_stock(tmp_path: Path) -> None:
    plan = plan_ronaqci("qgd1a", tmp_path, 5)
    stock = {link.name: 256 for link in plan.kms.links}
    starved = ("kme-constanta", "kme-slobozia")
    stock[starved] = 3
    path = write_picture(
        tmp_path / "p.svg", title="RoNaQCI <test> & co", kms=plan.kms, places=PLACES,
        stock=stock, lowest={starved: 0}, low_stock=8,
        tunnels=[TunnelLine("bucharest--constanta", "9 rotations", False)])
    root = ET.parse(path).getroot()  # noqa: S314 (our own file) well-formed, the title escaped
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "RoNaQCI <test> & co" in texts
    assert "constanta" in texts and "slobozia" in texts and "targu-mures" in texts
    lines = list(root.iter("{http://www.w3.org/2000/svg}line"))
    assert sum(1 for line in lines if line.get("stroke") == RED) >= 2  # the link + its edge
    assert sum(1 for line in lines if line.get("stroke") == GREEN) >= len(plan.kms.links) - 1
    assert stock_colour(None, 8, 256) != GREEN and stock_colour(100, 8, 256) == GREEN


def test_event_line_skips_start_up_churn_but_keeps_the_stock_alarm(tmp_path: Path) -> None:
    from gateway.demo.rotations import LogEvent

    obs = _observer(tmp_path, with_status=True)
    hub = obs.readers["bucharest"]
    hub.events.extend([
        LogEvent("bucharest", 10.0, "alarm_raised", {"alarm": "kms_low_stock",
                                                     "subject": "bucharest--constanta"}),
        LogEvent("bucharest", 11.0, "alarm_cleared", {"alarm": "tunnel_key_expired"}),
        LogEvent("bucharest", 30.0, "peer_connection_closed", {"peer": "iasi"}),
    ])
    shown = [e.event for e in obs.events(since=20.0)]
    assert shown == ["alarm_raised", "peer_connection_closed"]
    assert [e.event for e in obs.events(limit=1)] == ["peer_connection_closed"]
