"""The reconciliation pass checks a hub's PSK slots from one read of the interface, not one read
per tunnel (N reads of N peers: wireguard-go writes its whole device for each, the kernel dumps
it), and still restores a slot that drifted."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.daemon.keeper import TunnelKeeper
from gateway.daemon.periodic import _verify
from gateway.daemon.state import StateStore
from gateway.daemon.wg_installer import WgInterface, WireGuardInstaller
from gateway.dataplane import WgInterfaceSpec, WgPeerSpec
from gateway.dataplane.record import BENCH_ENV, RecordBackend
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit


class CountingBackend(RecordBackend):
    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {"psks": 0, "get_psk": 0}

    async def psks(self, ifname: str) -> dict[str, Secret | None]:
        self.calls["psks"] += 1
        return await super().psks(ifname)

    async def get_psk(self, ifname: str, peer_public_key: str) -> Secret | None:
        self.calls["get_psk"] += 1
        return await super().get_psk(ifname, peer_public_key)


async def test_one_read_per_interface_and_a_drifted_slot_restored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BENCH_ENV, "record")
    backend = CountingBackend()
    pubs = [base64.b64encode(os.urandom(32)).decode() for _ in range(5)]
    spec = WgInterfaceSpec("wg-hub", Secret(os.urandom(32)), 51820, peers=tuple(
        WgPeerSpec(p, None, (f"10.9.0.{i + 2}/32",), None) for i, p in enumerate(pubs)))
    iface = WgInterface(backend, spec)
    store = StateStore(tmp_path)
    store.prepare()
    events: list[tuple[str, dict[str, Any]]] = []
    installers, keepers, keys = {}, {}, {}
    for i, pub in enumerate(pubs):
        name = f"t{i}"
        installers[name] = WireGuardInstaller(iface, pub)
        keepers[name] = TunnelKeeper(name, 180, installers[name], store,
                                     emit=lambda e, **f: events.append((e, f)),
                                     alarm=lambda *a, **f: None)
        await keepers[name].start()
        keys[name] = Secret(os.urandom(32))
        await keepers[name].activate(1, keys[name], (), "qkd+pqc", "qkd+pqc")
    d = SimpleNamespace(tunnels=SimpleNamespace(installers=installers),
                        bus=SimpleNamespace(emit=lambda e, **f: events.append((e, f))))
    backend.calls = {"psks": 0, "get_psk": 0}

    async def one_pass() -> list[str]:
        slots: dict[str, Any] = {}
        return [n for n, k in keepers.items() if await _verify(d, n, k, slots)]  # type: ignore[arg-type]

    assert await one_pass() == []
    assert backend.calls == {"psks": 1, "get_psk": 0}

    await backend.set_psk("wg-hub", pubs[3], Secret(os.urandom(32)))  # behind the keeper's back
    assert await one_pass() == ["t3"]
    assert backend.calls == {"psks": 2, "get_psk": 1}  # the drifted slot is read again
    assert await backend.get_psk("wg-hub", pubs[3]) == keys["t3"]
    assert [e for e, _ in events].count("tunnel_key_drift") == 1


def test_a_reloaded_peer_key_is_looked_up_by_its_new_canonical_form(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BENCH_ENV, "record")
    a, b = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    spec = WgInterfaceSpec("wg-hub", Secret(os.urandom(32)), 51820, peers=())
    inst = WireGuardInstaller(WgInterface(RecordBackend(), spec), a)
    ka, kb = Secret(os.urandom(32)), Secret(os.urandom(32))
    slots: dict[str, Secret | None] = {a: ka, b: kb}
    handshakes: dict[str, float | None] = {a: 1.0, b: 2.0}
    assert inst.key_in(slots) is ka and inst.handshake_in(handshakes) == 1.0
    # The same key written with the spare bits of its last base64 character set (canonical
    # base64 of 32 bytes leaves them 0: that character is one of A, E, I, ... 8).
    spelled = b[:-2] + chr(ord(b[-2]) + 1) + "="
    assert spelled != b
    inst.peer_public_key = spelled  # what a reload that changes the peer's key does
    assert inst.peer_public_key == spelled
    assert inst.key_in(slots) is kb and inst.handshake_in(handshakes) == 2.0
