"""The benchmarks' key-recording backend: refused unless asked for by environment, and then a
faithful PSK slot store (read-back, unknown peers and interfaces)."""

import pytest

from gateway.dataplane import (
    BackendUnavailable,
    InterfaceNotFound,
    PeerNotFound,
    WgInterfaceSpec,
    WgPeerSpec,
    select_backend,
)
from gateway.dataplane.record import BENCH_ENV
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit

PUB = "x" * 43 + "="


def test_refused_without_the_benchmark_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BENCH_ENV, raising=False)
    with pytest.raises(BackendUnavailable, match="benchmarks only"):
        select_backend("record")


async def test_records_psks_per_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BENCH_ENV, "record")
    b = select_backend("record")
    spec = WgInterfaceSpec("bench0", Secret(b"p" * 32), peers=(WgPeerSpec(PUB),))
    assert await b.apply(spec) == []
    assert await b.get_psk("bench0", PUB) is None
    await b.set_psk("bench0", PUB, Secret(b"k" * 32))
    assert await b.get_psk("bench0", PUB) == Secret(b"k" * 32)
    with pytest.raises(PeerNotFound):
        await b.set_psk("bench0", "y" * 43 + "=", Secret(b"k" * 32))
    await b.remove("bench0")
    with pytest.raises(InterfaceNotFound):
        await b.get_psk("bench0", PUB)
