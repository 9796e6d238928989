"""Random schedules between two honest sites: any interleaving of message deliveries, action
results (in any order, arbitrarily late) and timer ticks keeps the safety properties:

* nothing raises and the session never breaks (messages are genuine and TCP-ordered);
* an epoch activated on both ends has the same keys on both ends (PSK, ESP directions, SPIs);
* activated epochs strictly increase on each end; no QKD key ID is used in two epochs;
* liveness: once the network delivers and the KMS works again, both ends converge on one epoch
  within two rekey intervals.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

from gateway.protocol import Activate, Close, Event, Kind, Mode, Output, TunnelPolicy
from tests.protocol.harness import FAST, KeyLink, Site, make_pair

# Equal rekey timers on both ends: collisions are part of every schedule.
TIMERS = dataclasses.replace(FAST, dead_after=1e9, keepalive_interval=1e9, handshake_timeout=1e9,
                             hello_timeout=1e9,
                             rekey_after=1.0, rekey_after_backup=1.0, rekey_timeout=3.0)
POLICIES = [TunnelPolicy("t", Mode.ANY, ("k1", "k2"), Kind.ESP),
            TunnelPolicy("t", Mode.QKD_PQC, ("k1", "k2"), Kind.WIREGUARD)]

MSG = st.tuples(st.just("msg"), st.sampled_from("ab"))
EV = st.tuples(st.just("ev"), st.sampled_from("ab"), st.integers(0, 7))
STEP = st.one_of(
    MSG, EV, MSG, EV, MSG, EV,
    st.tuples(st.just("tick"), st.floats(0.01, 0.6)),
    st.tuples(st.just("kms_fail"), st.sampled_from(["k1", "k2"])),
)


class Sim:
    def __init__(self, a: Site, b: Site) -> None:
        self.sites = {"a": a, "b": b}
        self.inbox: dict[str, list[bytes]] = {"a": [], "b": []}
        self.events: dict[str, list[Event]] = {"a": [], "b": []}
        self.now = 0.0

    def absorb(self, name: str, out: Output) -> None:
        other = "b" if name == "a" else "a"
        self.inbox[other] += [s.data for s in out.sends]
        for act in out.actions:
            assert not isinstance(act, Close), act
            ev = self.sites[name].perform(act)
            if ev is not None:
                self.events[name].append(ev)

    def drain(self) -> None:
        """Deliver everything in flight (messages and action results) until quiet."""
        for _ in range(400):
            if not any(self.inbox.values()) and not any(self.events.values()):
                return
            for n in "ab":
                self.step(("msg", n))
                self.step(("ev", n, 0))
        raise AssertionError("the two ends never went quiet")

    def step(self, op: tuple[Any, ...]) -> None:
        if op[0] == "msg" and self.inbox[op[1]]:
            self.absorb(op[1], self.sites[op[1]].node.receive(1, self.inbox[op[1]].pop(0),
                                                              self.now))
        elif op[0] == "ev" and self.events[op[1]]:
            ev = self.events[op[1]].pop(op[2] % len(self.events[op[1]]))
            self.absorb(op[1], self.sites[op[1]].node.handle(ev, self.now))
        elif op[0] == "tick":
            self.now += op[1]
            for n in "ab":
                self.absorb(n, self.sites[n].node.tick(self.now))
        elif op[0] == "kms_fail":
            self.sites["a"].links[op[1]].fail_fetches += 1


@pytest.mark.fuzz
@settings(max_examples=int(os.environ.get("SCHEDULE_EXAMPLES", "120")), deadline=None)
@given(st.sampled_from(POLICIES), st.lists(STEP, min_size=10, max_size=120))
def test_random_schedules_keep_both_ends_consistent(ids: Any, policy: TunnelPolicy,
                                                    ops: list[tuple[Any, ...]]) -> None:
    links = {"k1": KeyLink("k1"), "k2": KeyLink("k2")}
    a, b = make_pair([policy], ids=ids, links=links, timers=TIMERS)
    sim = Sim(a, b)
    sim.absorb("b", b.node.accept(1, 0.0))
    sim.absorb("a", a.node.connect(1, "b", 0.0))
    for op in ops:
        sim.step(op)
    sim.drain()
    target(float(sum(isinstance(x, Activate) for x in a.actions)))
    both = set(a.installed) & set(b.installed)
    for key in both:
        if a.active.get("t", 0) >= key[1] and b.active.get("t", 0) >= key[1]:
            ka, kb = a.installed[key], b.installed[key]
            assert ka.wg_psk == kb.wg_psk and ka.esp_in == kb.esp_out and ka.esp_out == kb.esp_in
            assert (ka.spi_in, ka.spi_out) == (kb.spi_out, kb.spi_in)
            assert ka.key_ids == kb.key_ids
    for site in (a, b):
        activated = [x.epoch for x in site.actions if isinstance(x, Activate)]
        assert activated == sorted(set(activated))
        used = [i for e in activated for i in site.installed[("t", e)].key_ids]
        assert len(used) == len(set(used))
    # liveness: the KMS works again and the network delivers promptly
    for link in links.values():
        link.fail_fetches = 0
    for _ in range(2):
        sim.step(("tick", TIMERS.rekey_after + 0.1))
        sim.drain()
    assert "t" in a.active and a.active == b.active
    assert a.keys("t").wg_psk == b.keys("t").wg_psk
