"""Fixtures for the data plane tests: a two-namespace WireGuard tunnel on wireguard-go."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from gateway.dataplane import UserspaceBackend, WgInterfaceSpec, WgPeerSpec
from gateway.keymaterial import Secret
from tests.netns_harness import Namespace, NetnsLab, wg_keypair


@dataclass
class Side:
    ns: Namespace
    ifname: str
    backend: UserspaceBackend
    private: bytes
    public: str
    spec: WgInterfaceSpec = field(init=False)


@dataclass
class Tunnel:
    lab: NetnsLab
    a: Side
    b: Side
    logs: list[MutableMapping[str, Any]]
    secrets: list[Secret] = field(default_factory=list)

    def psk(self) -> Secret:
        """A fresh PSK, remembered so the teardown can check it never reached a log."""
        psk = Secret.random(32)
        self.secrets.append(psk)
        return psk


def spec_for(me: Side, peer: Side, *, me_ip: str, peer_ip: str, port: int,
             endpoint: str | None) -> WgInterfaceSpec:
    return WgInterfaceSpec(
        name=me.ifname,
        private_key=Secret(me.private),
        listen_port=port,
        addresses=(f"{me_ip}/24",),
        peers=(WgPeerSpec(peer.public, endpoint, (f"{peer_ip}/32",), None),),
    )


def assert_no_key_bytes(text: str, keys: list[bytes]) -> None:
    for raw in keys:
        for form in (raw.hex(), base64.b64encode(raw).decode()):
            assert form not in text, "key bytes leaked into logs/output"


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    with NetnsLab() as lab:
        yield lab


@pytest.fixture
async def tunnel(lab: NetnsLab, capfd: pytest.CaptureFixture[str]) -> AsyncIterator[Tunnel]:
    """Namespaces a and b joined by a veth (192.168.77.0/24), a wireguard-go interface in each
    (10.77.0.1 <-> 10.77.0.2), configured through UserspaceBackend. No PSK yet."""
    na, nb = lab.namespace("a"), lab.namespace("b")
    lab.veth(na, "192.168.77.1/24", nb, "192.168.77.2/24")
    (ka, pa), (kb, pb) = wg_keypair(), wg_keypair()
    a = Side(na, lab.ifname("wga"), UserspaceBackend(na.name), ka, pa)
    b = Side(nb, lab.ifname("wgb"), UserspaceBackend(nb.name), kb, pb)
    a.spec = spec_for(a, b, me_ip="10.77.0.1", peer_ip="10.77.0.2", port=51820,
                      endpoint="192.168.77.2:51821")
    b.spec = spec_for(b, a, me_ip="10.77.0.2", peer_ip="10.77.0.1", port=51821, endpoint=None)
    with structlog.testing.capture_logs() as logs:
        t = Tunnel(lab, a, b, logs)
        assert await a.backend.apply(a.spec) == []
        assert await b.backend.apply(b.spec) == []
        yield t
    out, err = capfd.readouterr()
    assert_no_key_bytes(
        repr(logs) + out + err, [ka, kb, *(s.reveal() for s in t.secrets)]
    )
