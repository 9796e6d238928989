"""Per-tunnel rekeys driven through two Nodes in memory: all modes, failures, collisions, expiry."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from gateway.identity import SiteIdentity
from gateway.protocol import (
    Activate,
    Alarm,
    Expire,
    FetchQkdKeys,
    InstallKeys,
    Kind,
    Mode,
    Retire,
    TakeQkdKeys,
    TunnelPolicy,
)
from tests.protocol.conftest import assert_ids_announced_once
from tests.protocol.harness import FAST, KeyLink, Site, Wire, check_balance, make_pair

Ids = tuple[SiteIdentity, SiteIdentity]
Inits = list[tuple[str, str, int, tuple[str, ...]]]


def _run(w: Wire, until: float, step: float = 0.25, start: float = 0.0) -> None:
    t = start
    while t < until:
        t += step
        w.tick(t)


def _activated(site: Site) -> list[int]:
    return [x.epoch for x in site.actions if isinstance(x, Activate)]


def _assert_no_key_bytes(sites: tuple[Site, Site], links: dict[str, KeyLink]) -> None:
    text = "\n".join(repr(x) for s in sites for x in s.actions) + "\n".join(
        str(x) for s in sites for x in s.actions)
    secrets = [k.reveal() for link in links.values() for k in link.all_keys]
    for s in sites:
        for keys in s.installed.values():
            secrets += [keys.wg_psk.reveal(), keys.esp_in.reveal(), keys.esp_out.reveal()]
    assert secrets
    for sec in secrets:
        assert sec.hex() not in text and base64.b64encode(sec).decode() not in text


@pytest.mark.unit
@pytest.mark.parametrize(("mode", "kms", "kind", "achieved"), [
    (Mode.QKD_PQC, ("k1", "k2", "k3"), Kind.WIREGUARD,
     ("qkd:k1", "qkd:k2", "qkd:k3", "ml-kem-768", "x25519")),
    (Mode.QKD, ("k1",), Kind.ESP, ("qkd:k1", "x25519")),
    (Mode.PQC, (), Kind.ESP, ("ml-kem-768", "x25519")),
    (Mode.ANY, ("k1",), Kind.WIREGUARD, ("qkd:k1", "ml-kem-768", "x25519")),
])
def test_rekeys_in_every_mode_agree_on_keys(ids: Ids, mode: Mode, kms: tuple[str, ...],
                                            kind: Kind, achieved: tuple[str, ...]) -> None:
    a, b = make_pair([TunnelPolicy("t", mode, kms, kind)], ids=ids)
    w = Wire(a, b)
    w.open()
    _run(w, 4.0)
    assert a.active["t"] == b.active["t"] >= 7
    epochs = _activated(a)
    assert epochs == _activated(b) and len(epochs) >= 4
    for epoch in epochs:
        ka, kb = a.installed[("t", epoch)], b.installed[("t", epoch)]
        assert ka.wg_psk == kb.wg_psk and ka.esp_in == kb.esp_out and ka.esp_out == kb.esp_in
        assert ka.spi_in == kb.spi_out and ka.spi_out == kb.spi_in
        assert ka.achieved == achieved and ka.key_ids == kb.key_ids
        if kind is Kind.ESP:
            assert ka.spi_in >= 256
    psks = [a.installed[("t", e)].wg_psk.reveal() for e in epochs]
    assert len(set(psks)) == len(psks)
    all_ids = [i for e in epochs for i in a.installed[("t", e)].key_ids]
    assert len(all_ids) == len(set(all_ids))  # each QKD key used once
    _assert_no_key_bytes((a, b), a.links)


@pytest.mark.unit
def test_tunnel_status_reports_progress(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.PQC)], ids=ids)
    before = a.node.tunnel_status("t")
    assert (before.session_up, before.active_epoch, before.rekeys_completed) == (False, 0, 0)
    w = Wire(a, b)
    w.open(5.0)
    st = a.node.tunnel_status("t")
    assert (st.peer, st.mode, st.session_up, st.active_epoch, st.active_since) == (
        "b", "pqc", True, 1, 5.0)
    assert st.rekeys_completed == 1 and st.rekey_in_progress is None and not st.expired


@pytest.mark.unit
def test_restored_epochs_continue_upwards_after_a_restart(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.PQC)], ids=ids)
    a.node.restore_epoch("t", 40)
    b.node.restore_epoch("t", 40)
    w = Wire(a, b)
    w.open()
    assert a.active["t"] == b.active["t"] == 41  # A's next odd epoch above 40
    c, d = make_pair([TunnelPolicy("t", Mode.PQC)], ids=ids)
    d.node.restore_epoch("t", 40)  # only B remembers: A learns from STALE_EPOCH and catches up
    w = Wire(c, d)
    w.open()
    _run(w, 0.5, step=0.05)
    assert c.active["t"] == d.active["t"] > 40


@pytest.mark.unit
def test_make_before_break_order(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",), Kind.ESP)], ids=ids)
    w = Wire(a, b)
    w.open()
    _run(w, 2.5)
    for site in (a, b):
        kinds = [(type(x).__name__, getattr(x, "epoch", None)) for x in site.actions
                 if isinstance(x, InstallKeys | Activate | Retire)]
        epochs = _activated(site)
        assert len(epochs) >= 2
        for epoch in epochs:
            assert kinds.index(("InstallKeys", epoch)) < kinds.index(("Activate", epoch))
        first, second = epochs[:2]
        assert kinds.index(("Activate", second)) < kinds.index(("Retire", first))
    # B installs its inbound SA before A activates (A only gets RekeyResp after B's Installed)
    acts = [x for x in b.actions if isinstance(x, InstallKeys | Activate)]
    assert isinstance(acts[0], InstallKeys) and isinstance(acts[1], Activate)


@pytest.mark.unit
def test_fetch_failure_aborts_and_the_retry_uses_new_keys(ids: Ids) -> None:
    links = {"k1": KeyLink("k1", fail_fetches=1)}
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",))], ids=ids, links=links)
    w = Wire(a, b)
    w.open()
    taken = [x for x in a.actions if isinstance(x, TakeQkdKeys)]
    assert len(taken) == 1 and "t" not in a.active  # first attempt aborted
    assert any(isinstance(x, Alarm) and x.name == "qkd_unavailable" for x in b.actions)
    failed_id = next(x for x in b.actions if isinstance(x, FetchQkdKeys)).key_ids[0]
    _run(w, 0.5, step=0.05)
    assert a.active["t"] == b.active["t"] == 3  # epoch 1 was the aborted one (A uses odd ones)
    keys = a.keys("t")
    assert keys.key_ids != (failed_id,) and keys.wg_psk == b.keys("t").wg_psk
    assert not any(failed_id in k.key_ids for k in a.installed.values())


@pytest.mark.unit
def test_empty_pool_fails_closed_then_expires(ids: Ids) -> None:
    links = {"k1": KeyLink("k1")}
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",))], ids=ids, links=links)
    w = Wire(a, b)
    w.open()
    links["k1"].empty = True
    _run(w, 4.5)
    assert a.active["t"] == 1
    for site in (a, b):
        assert [x for x in site.actions if isinstance(x, Expire)] == [
            Expire("t", 1, "no new key within reject_after")]
        assert any(isinstance(x, Alarm) and x.name == "key_expired" for x in site.actions)
    assert any(isinstance(x, Alarm) and x.name == "qkd_unavailable" for x in a.actions)
    links["k1"].empty = False
    _run(w, 6.0, start=4.5)
    assert a.active["t"] > 1 and a.keys("t").wg_psk == b.keys("t").wg_psk


@pytest.mark.unit
def test_any_mode_reports_what_it_achieved(ids: Ids) -> None:
    links = {"k1": KeyLink("k1"), "k2": KeyLink("k2", empty=True)}
    a, b = make_pair([TunnelPolicy("t", Mode.ANY, ("k1", "k2"))], ids=ids, links=links)
    w = Wire(a, b)
    w.open()
    assert a.keys("t").achieved == b.keys("t").achieved == ("qkd:k1", "ml-kem-768", "x25519")


@pytest.mark.unit
def test_any_mode_leaves_out_a_path_the_responder_cannot_fetch(ids: Ids) -> None:
    links = {"k1": KeyLink("k1"), "k2": KeyLink("k2", fail_fetches=1)}
    a, b = make_pair([TunnelPolicy("t", Mode.ANY, ("k1", "k2"))], ids=ids, links=links)
    w = Wire(a, b)
    w.open()
    ka, kb = a.keys("t"), b.keys("t")
    assert ka.achieved == kb.achieved == ("qkd:k1", "ml-kem-768", "x25519")
    assert ka.wg_psk == kb.wg_psk and ka.key_ids == kb.key_ids and len(ka.key_ids) == 1
    _run(w, 1.5)  # the next rekey gets both paths again
    assert a.keys("t").achieved == ("qkd:k1", "qkd:k2", "ml-kem-768", "x25519")


@pytest.mark.unit
@pytest.mark.parametrize("mode", [Mode.QKD_PQC, Mode.QKD])
def test_exact_modes_abort_when_a_path_cannot_be_fetched(ids: Ids, mode: Mode) -> None:
    links = {"k1": KeyLink("k1"), "k2": KeyLink("k2", fail_fetches=1)}
    a, b = make_pair([TunnelPolicy("t", mode, ("k1", "k2"))], ids=ids, links=links)
    w = Wire(a, b)
    w.open()
    assert "t" not in a.active and "t" not in b.active
    assert not any(isinstance(x, InstallKeys) for x in a.actions + b.actions)
    _run(w, 0.5, step=0.05)
    assert len(a.keys("t").key_ids) == 2 and a.keys("t").wg_psk == b.keys("t").wg_psk


@pytest.mark.unit
def test_rekey_collision_is_resolved_deterministically(ids: Ids, inits: Inits) -> None:
    # Equal timers on both sides: every rekey (the first one too) starts on both ends at once.
    timers = dataclasses.replace(FAST, rekey_after_backup=FAST.rekey_after)
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",))], ids=ids, timers=timers)
    w = Wire(a, b)
    w.open()
    w.tick(1.0)  # both ticks run before either's RekeyInit is delivered
    # Both really started twice (A with odd epochs, B with even ones); A won both times.
    assert [x.epoch for x in a.actions if isinstance(x, TakeQkdKeys)] == [1, 3]
    assert _activated(a) == _activated(b) == [1, 3]
    assert a.keys("t").wg_psk == b.keys("t").wg_psk
    # sae-a < sae-b: A wins every collision and never fetched B's keys; but B's RekeyInits
    # had announced their key IDs, so B never offers those keys again (its second attempt
    # takes a new one) and reports each as discarded.
    assert [x.epoch for x in b.actions if isinstance(x, TakeQkdKeys)] == [2, 4]
    assert b.discarded() == {"collision": 2} and a.discarded() == {}
    assert b.node.tunnels["t"].spare_ids() == []
    used = {i for k in a.installed.values() for i in k.key_ids}
    assert used == {i for k in b.installed.values() for i in k.key_ids}
    b_fetched = {i for x in b.actions if isinstance(x, FetchQkdKeys) for i in x.key_ids}
    assert used == b_fetched
    assert not any(x for x in a.actions if isinstance(x, FetchQkdKeys))
    assert_ids_announced_once(inits)
    check_balance(a, b)


@pytest.mark.unit
def test_unanswered_rekey_times_out_and_retries(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",))], ids=ids)
    b.auto_install = False  # B's data plane never confirms an install
    w = Wire(a, b)
    w.open()
    assert "t" not in a.active
    _run(w, 3.0)
    assert "t" not in a.active and "t" not in b.active
    epochs = [x.epoch for s in (a, b) for x in s.actions if isinstance(x, TakeQkdKeys)]
    assert len(epochs) >= 3 and len(set(epochs)) == len(epochs)  # never an epoch twice
    assert any(isinstance(x, Retire) for x in b.actions)  # B drops the half-installed epoch


@pytest.mark.unit
def test_a_reused_key_id_is_refused(ids: Ids) -> None:
    links = {"k1": KeyLink("k1")}
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",))], ids=ids, links=links)
    w = Wire(a, b)
    w.open()
    links["k1"].reissue = a.keys("t").key_ids[0]
    _run(w, 1.5)
    assert a.active["t"] == 1
    fetches = [x for x in b.actions if isinstance(x, FetchQkdKeys)]
    assert len(fetches) == 1  # B never asked its KMS for the reused ID again


@pytest.mark.unit
def test_peer_lowering_the_mode_at_rekey_time_is_refused(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",))], ids=ids)
    w = Wire(a, b)
    w.open()
    # B turns malicious after authenticating: it now asks for pqc-only keys.
    b.node.tunnels["t"].policy = TunnelPolicy("t", Mode.PQC)
    a.node.tunnels["t"].preferred = False
    b.node.tunnels["t"].preferred = True
    _run(w, 1.0)
    assert a.active["t"] == 1
    assert any(isinstance(x, Alarm) and x.name == "downgrade_refused" for x in a.actions)
    assert not [x for x in a.actions if isinstance(x, InstallKeys) and x.epoch > 1]


@pytest.mark.unit
def test_a_confirmation_arriving_too_late_triggers_an_immediate_rekey(ids: Ids) -> None:
    from tests.protocol.test_schedules import Sim

    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",))], ids=ids)
    sim = Sim(a, b)

    def pump(*, hold_confirm: bool) -> None:
        moved = True
        while moved:
            moved = False
            for n in "ab":
                if sim.events[n]:
                    sim.step(("ev", n, 0))
                    moved = True
            if sim.inbox["a"]:
                sim.step(("msg", "a"))
                moved = True
            pending = b.node.tunnels["t"].pending
            held = hold_confirm and pending is not None and pending.stage == "await_confirm"
            if sim.inbox["b"] and not held:
                sim.step(("msg", "b"))
                moved = True

    sim.absorb("b", b.node.accept(1, 0.0))
    sim.absorb("a", a.node.connect(1, "b", 0.0))
    pump(hold_confirm=True)  # A's RekeyConfirm is stuck in the network
    assert a.active["t"] == 1 and "t" not in b.active
    sim.now = 1.0
    sim.absorb("b", b.node.tick(1.0))  # B's rekey timeout fires: it aborts epoch 1
    pump(hold_confirm=False)
    assert any(isinstance(x, Alarm) and x.name == "epoch_not_confirmed" for x in a.actions)
    sim.step(("tick", 0.05))  # A rekeys at once instead of waiting 120 s on mismatched keys
    pump(hold_confirm=False)
    assert a.active["t"] == b.active["t"] == 2
    assert a.keys("t").wg_psk == b.keys("t").wg_psk


@pytest.mark.unit
def test_install_failure_aborts_alarms_and_retries(ids: Ids) -> None:
    from gateway.protocol import InstallFailed

    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",), Kind.ESP)], ids=ids)
    b.auto_install = False
    w = Wire(a, b)
    w.open()
    install = next(x for x in b.actions if isinstance(x, InstallKeys))
    w._absorb(b, b.node.handle(InstallFailed("t", install.epoch, "EINVAL from XFRM"), 0.1), 0.1)
    w.run(0.1)
    assert any(isinstance(x, Alarm) and x.name == "install_failed" for x in b.actions)
    assert Retire("t", install.epoch) in b.actions
    assert "t" not in a.active and a.node.tunnel_status("t").rekey_in_progress is None
    b.auto_install = True
    _run(w, 0.6, step=0.05, start=0.1)
    assert a.active["t"] == b.active["t"] > install.epoch


@pytest.mark.unit
def test_losing_the_session_mid_exchange_retires_a_half_installed_epoch(ids: Ids) -> None:
    a, b = make_pair([TunnelPolicy("t", Mode.QKD_PQC, ("k1",), Kind.ESP)], ids=ids)
    b.auto_install = False
    w = Wire(a, b)
    w.open()
    install = next(x for x in b.actions if isinstance(x, InstallKeys))
    out = b.node.connection_lost(1, 0.2)
    assert Retire("t", install.epoch) in out.actions
    st = b.node.tunnel_status("t")
    assert not st.session_up and st.rekey_in_progress is None



@pytest.mark.unit
def test_per_tunnel_timers_move_the_rekey_and_the_expiry(ids: Ids) -> None:
    """Node.set_tunnel_timers: the daemon's per-tunnel interval (the configured one, or the one
    stretched on low KMS stock) decides when the next rekey starts and when the key expires."""
    a, b = make_pair([TunnelPolicy("t", Mode.PQC)], ids=ids)
    w = Wire(a, b)
    w.open()
    _run(w, 0.5)
    first = _activated(a)
    assert first
    ta = a.node.tunnels["t"]
    assert ta.active_at is not None
    a.node.set_tunnel_timers("t", 5.0, 8.0)
    b.node.set_tunnel_timers("t", 5.0, 8.0)
    start = ta.active_at
    assert ta.due() == start + 5.0
    _run(w, start + 4.75, start=0.5)
    assert _activated(a) == first  # FAST would have rekeyed every 1 s
    _run(w, start + 5.5, start=start + 4.75)
    assert len(_activated(a)) == len(first) + 1
    # No session any more: nothing rekeys, and the key expires at the per-tunnel reject_after.
    w.closed.append("test")
    now = ta.active_at
    assert now is not None
    a.node.connection_lost(1, now)
    expired = [x for x in a.node.tick(now + 8.0).actions if isinstance(x, Expire)]
    assert [x.tunnel for x in expired] == ["t"]
    with pytest.raises(ValueError):
        a.node.set_tunnel_timers("t", 8.0, 5.0)
