"""XFRM tunnel settings the daemon programs: policy vs route mode (if_id), replay window, ESN,
packet lifetimes; each error names the key, the line and the fix. The daemon's reqids for
XFRM tunnels are stable across reloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.daemon.build import esp_reqids, esp_spec
from gateway.dataplane.xfrm import REQID_MAX, REQID_MIN, assign_reqids
from tests.config.sitefiles import BASE
from tests.config.test_errors import problems as errors
from tests.config.test_rules import XFRM

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]



def test_route_mode_with_everything_set_loads_and_builds(write_config: Write) -> None:
    text = BASE + XFRM + ("      mode: route\n      if_id: 7\n      replay_window: 512\n"
                          "      esn: false\n      lifetime: {soft_packets: 1000, "
                          "hard_packets: 2000, soft_time: 50m, hard_time: 1h}\n")
    t = load_config(write_config(text)).tunnels[1]
    assert t.xfrm is not None and (t.xfrm.mode, t.xfrm.if_id) == ("route", 7)
    spec = esp_spec(t, esp_reqids([t])[t.name])
    assert (spec.mode, spec.if_id, spec.ifname) == ("route", 7, "xfrm-beta")
    assert (spec.replay_window, spec.esn) == (512, False)
    life = spec.lifetime
    assert (life.soft_packets, life.hard_packets, life.soft_seconds, life.hard_seconds) == (
        1000, 2000, 3000, 3600)
    assert spec.local_subnets == ("10.1.0.0/16",) and spec.remote_subnets == ("10.3.0.0/16",)


def test_policy_mode_is_the_default(write_config: Write) -> None:
    t = load_config(write_config(BASE + XFRM)).tunnels[1]
    spec = esp_spec(t, esp_reqids([t])[t.name])
    assert (spec.mode, spec.if_id, spec.ifname, spec.replay_window, spec.esn) == (
        "policy", None, None, 128, True)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("      mode: route\n",
         "tunnels[1].xfrm.if_id (line 37): route mode needs if_id, a number from 1 to "
         "4294967295 that links the XFRM interface to its policies and SAs; add e.g. if_id: 7 "
         "(unique on this host)"),
        ("      if_id: 7\n",
         "tunnels[1].xfrm.if_id (line 42): if_id belongs to mode: route (an XFRM interface); "
         "remove if_id, or set mode: route"),
        ("      mode: route\n      if_id: 0\n",
         "tunnels[1].xfrm.if_id (line 43): route mode needs if_id, a number from 1 to "
         "4294967295 that links the XFRM interface to its policies and SAs; add e.g. if_id: 7 "
         "(unique on this host)"),
        ("      replay_window: 0\n",
         "tunnels[1].xfrm.replay_window (line 42): esn needs a replay window (the kernel keeps "
         "the high sequence number bits there); set replay_window above 0, or esn: false"),
        ("      replay_window: 5000\n",
         "tunnels[1].xfrm.replay_window (line 42): replay_window must be 0 to 4096 packets; "
         "write e.g. 128"),
        ("      lifetime: {soft_packets: 2000, hard_packets: 2000}\n",
         "tunnels[1].xfrm.lifetime.soft_packets (line 42): soft_packets must be below "
         "hard_packets; lower soft_packets or raise hard_packets"),
        ("      lifetime: {soft_time: 90.5s}\n",
         "tunnels[1].xfrm.lifetime.soft_time (line 42): the kernel counts SA lifetimes in whole "
         "seconds; write e.g. 50m or 3000s"),
    ],
)
def test_xfrm_settings_errors(write_config: Write, extra: str, expected: str) -> None:
    assert errors(write_config, BASE + XFRM + extra) == expected


def test_replay_window_zero_without_esn_is_allowed(write_config: Write) -> None:
    t = load_config(write_config(BASE + XFRM + "      replay_window: 0\n      esn: false\n"))
    assert t.tunnels[1].xfrm is not None and t.tunnels[1].xfrm.replay_window == 0


def test_subnets_must_pair_and_must_not_hold_the_peer_gateway(write_config: Write) -> None:
    text = BASE + XFRM.replace("remote_subnets: [10.3.0.0/16]",
                               "remote_subnets: [10.3.0.0/16, 'fd03::/64']")
    assert errors(write_config, text) == (
        "tunnels[1].xfrm.remote_subnets (line 41): remote subnet fd03::/64 has no local subnet "
        "of its IP version to pair with (policies pair subnets of one version); add a local "
        "subnet of that version, or remove this one")
    text = BASE + XFRM.replace("remote_subnets: [10.3.0.0/16]",
                               "remote_subnets: [198.51.100.0/24]")
    assert "contains remote_address 198.51.100.2" in errors(write_config, text)


def test_route_mode_if_ids_are_unique(write_config: Write) -> None:
    second = XFRM.replace("name: t1", "name: t2").replace("xfrm-beta", "xfrm-b2").replace(
        "10.3.0.0/16", "10.4.0.0/16")
    route = "      mode: route\n      if_id: 9\n"
    assert errors(write_config, BASE + XFRM + route + second + route) == (
        "tunnels[2].xfrm.if_id (line 55): if_id 9 is already used by tunnels[1]; give each "
        "route-mode tunnel its own if_id")


def test_reqids_are_stable_across_reloads(write_config: Write) -> None:
    cfg = load_config(write_config(BASE + XFRM))
    first = esp_reqids(cfg.tunnels)
    assert first == assign_reqids(["t1"]) and REQID_MIN <= first["t1"] <= REQID_MAX
    # A tunnel added later whose name hashes to t1's reqid takes the next one; t1 keeps its own
    # even when the new name sorts first (a fresh assign_reqids would renumber t1).
    collide = next(n for n in (f"a{i}" for i in range(200_000))
                   if assign_reqids([n])[n] == first["t1"])
    both = esp_reqids([*cfg.tunnels, cfg.tunnels[1].model_copy(update={"name": collide})],
                      keep=first)
    assert both["t1"] == first["t1"] and both[collide] == first["t1"] + 1
