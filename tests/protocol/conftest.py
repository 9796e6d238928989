"""Fixtures of the protocol tests: site identities are costly-ish (ML-DSA keygen), share them."""

from __future__ import annotations

import pytest

from gateway.identity import SiteIdentity


@pytest.fixture(scope="session")
def ids() -> tuple[SiteIdentity, SiteIdentity]:
    return SiteIdentity.generate(), SiteIdentity.generate()


@pytest.fixture
def inits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int, tuple[str, ...]]]:
    """Every RekeyInit any core sends in the test: (local SAE ID, tunnel, epoch, QKD key IDs).
    A spy around the real method (it still runs): the key IDs a peer was told, to prove that a
    key ID, once announced, is never offered again."""
    from gateway.protocol.exchange import Exchange, Sink
    from gateway.protocol.rekey import Tunnel

    seen: list[tuple[str, str, int, tuple[str, ...]]] = []
    real = Tunnel._send_init

    def spy(self: Tunnel, p: Exchange, now: float, sink: Sink) -> None:
        real(self, p, now, sink)
        assert p.init is not None
        seen.append((self.local_sae, self.name, p.epoch, tuple(i for i in p.init.key_ids if i)))

    monkeypatch.setattr(Tunnel, "_send_init", spy)
    return seen


def assert_ids_announced_once(inits: list[tuple[str, str, int, tuple[str, ...]]]) -> None:
    ids = [i for _, _, _, kids in inits for i in kids]
    assert len(ids) == len(set(ids)), f"a QKD key ID was offered in two RekeyInits: {inits}"
