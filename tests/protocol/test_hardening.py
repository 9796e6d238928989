"""Issue 9 (external review), protocol items 5, 7, 8, 9, 10: each scenario failed on 690dc81.

Two Nodes in memory (tests/protocol/harness.py) with real keys, real ML-KEM/X25519, real AEAD.
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.identity import SiteIdentity
from gateway.protocol import (
    Activate,
    ActivateFailed,
    Alarm,
    FetchQkdKeys,
    KeysFetchFailed,
    Mode,
    Retire,
    TakeQkdKeys,
    TunnelPolicy,
)
from gateway.protocol.constants import EPOCH_CEILING, MAX_EPOCH_STEP
from gateway.protocol.inner import AbortCode, RekeyAbort, encode_inner
from tests.protocol.conftest import assert_ids_announced_once
from tests.protocol.harness import FAST, KeyLink, Site, Wire, check_balance, make_pair

pytestmark = pytest.mark.unit
Ids = tuple[SiteIdentity, SiteIdentity]
Inits = list[tuple[str, str, int, tuple[str, ...]]]
POL = [TunnelPolicy("t", Mode.QKD_PQC, ("k1",))]


def _run(w: Wire, until: float, step: float = 0.25, start: float = 0.0) -> float:
    t = start
    while t < until:
        t += step
        w.tick(t)
    return t


def _alarms(site: Site, name: str) -> list[Alarm]:
    return [x for x in site.actions if isinstance(x, Alarm) and x.name == name]


# -- item 5: epoch resync after state loss -------------------------------------------------------

@pytest.mark.parametrize("ahead", ["b", "a"])
def test_epochs_resynchronise_after_one_end_lost_its_state(ids: Ids, ahead: str,
                                                          inits: Inits) -> None:
    """One end kept epoch 5,000,000 (> MAX_EPOCH_STEP); the other restarted without its state.
    Before: the stale-epoch hint was ignored and the peer's RekeyInit refused, so neither end
    ever got a key. Now the end without a completed exchange adopts the peer's epoch."""
    a, b = make_pair(POL, ids=ids)
    (b if ahead == "b" else a).node.restore_epoch("t", 5_000_000)
    w = Wire(a, b)
    w.open()
    _run(w, 4.0)
    assert a.active.get("t", 0) > 5_000_000 and a.active["t"] == b.active["t"]
    assert a.keys("t").wg_psk == b.keys("t").wg_psk
    # The refused attempt's key ID was announced: it is never offered again, and reported.
    # When B is ahead, A (preferred, restarted) is refused once with STALE_EPOCH; when A is
    # ahead, B adopts A's epoch and nothing is refused.
    assert a.discarded() == ({"peer_refused": 1} if ahead == "b" else {})
    assert b.discarded() == {}
    assert_ids_announced_once(inits)
    check_balance(a, b)


def test_the_bound_on_hostile_epochs_still_holds_after_synchronisation(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()  # one exchange completed: b is synchronised
    t = b.node.tunnels["t"]
    assert t.synced
    channel = a.node._conns[1].channel
    assert channel is not None
    far = t.highest + MAX_EPOCH_STEP + 10
    b.node.receive(1, channel.seal(encode_inner(RekeyAbort("t", 99, AbortCode.STALE_EPOCH, far))),
                   0.1)
    assert t.last_attempt < far
    # ... and before synchronisation, nothing beyond the absolute ceiling is adopted.
    fresh_a, fresh_b = make_pair(POL, ids=ids)
    fresh_b.node.tunnels["t"].synced = False
    w2 = Wire(fresh_a, fresh_b)
    fresh_a.auto_install = fresh_b.auto_install = False
    w2.open()
    ch = fresh_a.node._conns[1].channel
    assert ch is not None
    fresh_b.node.receive(1, ch.seal(encode_inner(RekeyAbort("t", 2, AbortCode.STALE_EPOCH,
                                                            EPOCH_CEILING + 1))), 0.1)
    assert fresh_b.node.tunnels["t"].last_attempt < EPOCH_CEILING


# -- item 7: silent divergence, acknowledged confirmation, ActivateFailed -------------------------

def _lose_the_confirm(w: Wire) -> None:
    """Deliver until A activates (it sends RekeyConfirm in the same step), then lose that
    message and the session with it, as a reset on the path would."""
    a, b = w.a, w.b
    while w.queue:
        site, data = w.queue.pop(0)
        before = len(a.actions)
        w._absorb(site, site.node.receive(1, data, 0.0), 0.0)
        if any(isinstance(x, Activate) for x in a.actions[before:]):
            w.queue.clear()
            w._absorb(a, a.node.connection_lost(1, 0.0), 0.0)
            w._absorb(b, b.node.connection_lost(1, 0.0), 0.0)
            return
    raise AssertionError("A never activated")


def test_a_lost_confirmation_is_detected_and_repaired_on_the_next_session(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w._absorb(b, b.node.accept(1, 0.0), 0.0)
    w._absorb(a, a.node.connect(1, "b", 0.0), 0.0)
    _lose_the_confirm(w)
    assert a.active["t"] == 1 and "t" not in b.active  # the ends run different keys
    assert a.node.tunnels["t"].unacked == 1  # ... and A knows it has no acknowledgement
    w.open(0.1)  # the dialer reconnects
    w.tick(0.15)
    # At once, not after rekey_after (1 s): A asks for B's key check, sees that B has no key
    # (epoch 0: no alarm, B's data plane still holds its random start-up PSK) and rekeys.
    assert a.active["t"] == b.active["t"] >= 3
    assert a.keys("t").wg_psk == b.keys("t").wg_psk


def test_the_responder_acknowledges_and_keepalives_carry_matching_key_checks(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()
    ta, tb = a.node.tunnels["t"], b.node.tunnels["t"]
    assert ta.unacked is None  # B's acknowledgement arrived
    assert ta.key_check().check == tb.key_check().check != bytes(16)
    _run(w, 3 * FAST.keepalive_interval, step=0.1)  # keepalives cross-check every tunnel
    assert not _alarms(a, "key_divergence") and not _alarms(b, "key_divergence")


def test_divergence_is_seen_in_a_keepalive_and_repaired_within_an_interval(ids: Ids) -> None:
    """B's data plane (and view) went back to an older epoch while A moved on, e.g. a state
    file restored from an old backup: both hold keys, different ones."""
    a, b = make_pair(POL, ids=ids, timers=FAST)
    w = Wire(a, b)
    w.open()
    _run(w, 1.1, step=0.05)  # epoch 3 replaced epoch 1
    tb = b.node.tunnels["t"]
    tb.active_epoch, tb.active_check = 1, b"\x01" * 16  # B "runs" epoch 1 again
    before = a.active["t"]
    assert before == 3
    _run(w, 1.1 + FAST.keepalive_interval + 0.2, step=0.05, start=1.1)
    assert _alarms(a, "key_divergence") or _alarms(b, "key_divergence")
    assert a.active["t"] == b.active["t"] > before
    assert a.keys("t").wg_psk == b.keys("t").wg_psk


@pytest.mark.parametrize("who", ["a", "b"])
def test_a_failed_activation_reverts_alarms_tells_the_peer_and_rekeys(ids: Ids, who: str) -> None:
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()
    _run(w, 1.1, step=0.05)  # epoch 3 replaced epoch 1
    site, other = (a, b) if who == "a" else (b, a)
    failed = site.active["t"]
    site.active["t"] = 1  # what the data plane still holds
    w._absorb(site, site.node.handle(ActivateFailed("t", failed, "EPERM from netlink"), 1.2), 1.2)
    w.run(1.2)
    assert _alarms(site, "activate_failed")
    assert site.node.tunnel_status("t").active_epoch == 1  # its view is the data plane's again
    assert _alarms(other, "peer_activate_failed")  # the peer was told
    assert Retire("t", failed) in site.actions
    _run(w, 1.6, step=0.05, start=1.2)  # well before rekey_after (1.0 s after 1.2 s)
    assert a.active["t"] == b.active["t"] > failed
    assert a.keys("t").wg_psk == b.keys("t").wg_psk


# -- item 8: backoff across resets, fewer keys wasted --------------------------------------------

def test_resets_after_each_rekeyinit_back_off_instead_of_burning_keys(ids: Ids) -> None:
    """An on-path attacker resets TCP right after each RekeyInit. Before: the backoff reset on
    every new session, so each reconnect burned a QKD key at once (40 in 20 s here)."""
    timers = dataclasses.replace(FAST, retry_base=1.0, retry_cap=30.0)  # the defaults
    a, b = make_pair(POL, ids=ids, timers=timers)
    b.auto_install = False  # the exchange never completes before the reset
    w = Wire(a, b)
    t = 0.0
    for _ in range(40):
        w.open(t)
        w._absorb(a, a.node.connection_lost(1, t), t)
        w._absorb(b, b.node.connection_lost(1, t), t)
        w.queue.clear()
        t += 0.5
        w.tick(t)
    takes = sum(isinstance(x, TakeQkdKeys) for x in a.actions)
    # Retries after 1, 2, 4, 8 s (+-20 %): five attempts in 20 s, not one per reconnect.
    assert takes <= 6, takes
    assert a.node.tunnels["t"].failures >= 4  # still counting: the backoff was not reset


def test_keys_taken_for_an_attempt_aborted_while_gathering_are_reused(ids: Ids) -> None:
    links = {"k1": KeyLink("k1"), "k2": KeyLink("k2", empty=True)}
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1", "k2"))], ids=ids, links=links)
    w = Wire(a, b)
    w.open()  # k2 is empty: A's attempt aborts in GATHER with a k1 key in hand
    assert "t" not in a.active
    first = [x for x in a.actions if isinstance(x, TakeQkdKeys) and x.kms == "k1"]
    links["k2"].empty = False
    _run(w, 1.0, step=0.05)
    assert a.active["t"] == b.active["t"]
    takes = [x for x in a.actions if isinstance(x, TakeQkdKeys) and x.kms == "k1"]
    assert len(first) == len(takes) == 1  # the k1 key of the aborted attempt was used later
    assert a.keys("t").key_ids[0] == next(iter(links["k1"].issued))


# -- item 9: mode "any" says when it drops a path ------------------------------------------------

def test_any_mode_raises_and_clears_an_alarm_for_a_dropped_qkd_path(ids: Ids) -> None:
    links = {"k1": KeyLink("k1"), "k2": KeyLink("k2", empty=True)}
    a, b = make_pair([TunnelPolicy("t", Mode.ANY, ("k1", "k2"))], ids=ids, links=links)
    w = Wire(a, b)
    w.open()
    assert a.keys("t").achieved == ("qkd:k1", "ml-kem-768", "x25519")
    raised = _alarms(a, "qkd_path_dropped")
    assert raised and raised[0].active and "k2" in raised[0].reason
    links["k2"].empty = False
    _run(w, 1.1, step=0.05)  # the next rekey gets every path: the alarm is cleared
    assert a.keys("t").achieved == ("qkd:k1", "qkd:k2", "ml-kem-768", "x25519")
    cleared = [x for x in _alarms(a, "qkd_path_dropped") if not x.active]
    assert cleared


def test_any_mode_alarms_when_the_responder_cannot_fetch_a_path(ids: Ids) -> None:
    links = {"k1": KeyLink("k1"), "k2": KeyLink("k2", fail_fetches=1)}
    a, b = make_pair([TunnelPolicy("t", Mode.ANY, ("k1", "k2"))], ids=ids, links=links)
    Wire(a, b).open()
    assert a.keys("t").achieved == ("qkd:k1", "ml-kem-768", "x25519")
    assert _alarms(a, "qkd_path_dropped") and _alarms(b, "qkd_path_dropped")


# -- item 10: the used-key-ID memory ----------------------------------------------------------------

def test_a_failed_fetch_does_not_burn_the_key_id(ids: Ids) -> None:
    """Before: the responder recorded the IDs of a RekeyInit before fetching them."""
    links = {"k1": KeyLink("k1", fail_fetches=1)}
    a, b = make_pair(POL, ids=ids, links=links)
    w = Wire(a, b)
    w.open()
    failed = next(x for x in b.actions if isinstance(x, FetchQkdKeys)).key_ids[0]
    assert failed not in links["k1"].delivered
    exported = b.node.export_used_key_ids()
    assert failed not in exported.get("a", {}).get("k1", [])
    _run(w, 1.0, step=0.05)
    used = a.keys("t").key_ids[0]
    assert used in b.node.export_used_key_ids()["a"]["k1"]
    assert used in a.node.export_used_key_ids()["b"]["k1"]  # the initiator records it too


def test_key_id_memory_is_per_peer_and_kms_and_survives_a_restart(ids: Ids) -> None:
    links = {"k1": KeyLink("k1")}
    a, b = make_pair(POL, ids=ids, links=links)
    Wire(a, b).open()
    saved = b.node.export_used_key_ids()
    assert list(saved) == ["a"] and list(saved["a"]) == ["k1"]
    # B restarts: a fresh node, the memory restored from the daemon's state store.
    _a2, b2 = make_pair(POL, ids=ids, links=links)
    assert b2.node.restore_used_key_ids(saved) == 1
    assert b2.node.restore_used_key_ids({"a": {"other-kms": ["x"]}, "zz": {"k1": ["y"]}}) == 0
    assert b2.node.export_used_key_ids() == saved
    # A broken master KMS re-issues the used ID after the restart: refused before any fetch.
    links["k1"].reissue = saved["a"]["k1"][0]
    w = Wire(make_pair(POL, ids=ids, links=links)[0], b2)
    w.open(1.0)
    assert not [x for x in b2.actions if isinstance(x, FetchQkdKeys)]
    assert any(isinstance(x, Alarm) and x.name == "key_reuse_refused" for x in b2.actions)


def test_fetch_failures_are_not_recorded_and_the_responder_still_refuses_reuse(ids: Ids) -> None:
    a, b = make_pair(POL, ids=ids)
    w = Wire(a, b)
    w.open()
    channel = a.node._conns[1].channel
    assert channel is not None
    kid = a.keys("t").key_ids[0]
    # the fetch of a fresh ID fails on B's side: nothing is recorded
    b.node.handle(KeysFetchFailed("t", 99, "k1", "gone"), 0.2)
    assert kid in b.node.export_used_key_ids()["a"]["k1"]
    assert len(b.node.export_used_key_ids()["a"]["k1"]) == 1
