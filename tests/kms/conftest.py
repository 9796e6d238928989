"""Shared KMS fixtures: real embedded KME networks on loopback, and a raw mutual-TLS helper.

``kme_pair``:  KME_A --- KME_B             SAE_A@KME_A, SAE_B@KME_B
``kme_chain``: KME_A --- KME_R --- KME_B   (KME_R a trusted relay), same SAEs

Both yield a started :class:`~gateway.kms.sim.KmeNetwork` (key_rate 0, 1000 keys of 256 bits
per link, max 128 keys a request) and stop it afterwards. ``raw_sae`` builds a :class:`RawSae`,
a deliberately dumb HTTPS client (status, parsed JSON, headers) for conformance tests: it is not
the product client and must stay that simple.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.kms.sim import KmeNetwork

KME_A, KME_B, KME_R = "KME_A", "KME_B", "KME_R"
SAE_A, SAE_B = "SAE_A", "SAE_B"
# A certificate from the same CA whose CN is no registered SAE: must get 401.
SAE_STRANGER = "SAE_STRANGER"
LOOPBACK = "127.0.0.1"
REQUEST_TIMEOUT_S = 5.0


@pytest.fixture(scope="session")
def kme_pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PKI for the session: EC key generation is cheap, but there is no need to repeat it."""
    from gateway.kms.sim import ensure_pki

    directory = tmp_path_factory.mktemp("kme-pki")
    ensure_pki(directory, kmes={k: [LOOPBACK] for k in (KME_A, KME_B, KME_R)},
               saes=[SAE_A, SAE_B, SAE_STRANGER])
    return directory


def pair_network(pki_dir: Path, **kwargs: Any) -> KmeNetwork:
    """KME_A---KME_B with SAE_A@KME_A, SAE_B@KME_B; ``kwargs`` go to :class:`KmeNetwork`."""
    return KmeNetwork(pki_dir, kmes={KME_A: (LOOPBACK, 0), KME_B: (LOOPBACK, 0)},
                      links=[(KME_A, KME_B)], saes={SAE_A: KME_A, SAE_B: KME_B}, **kwargs)


def chain_network(pki_dir: Path, **kwargs: Any) -> KmeNetwork:
    """KME_A---KME_R---KME_B (KME_R a trusted relay), same SAEs as :func:`pair_network`."""
    return KmeNetwork(
        pki_dir, kmes={KME_A: (LOOPBACK, 0), KME_R: (LOOPBACK, 0), KME_B: (LOOPBACK, 0)},
        links=[(KME_A, KME_R), (KME_R, KME_B)], saes={SAE_A: KME_A, SAE_B: KME_B}, **kwargs)


@pytest.fixture
async def kme_pair(kme_pki_dir: Path) -> AsyncIterator[KmeNetwork]:
    async with pair_network(kme_pki_dir) as net:
        yield net


@pytest.fixture
async def kme_chain(kme_pki_dir: Path) -> AsyncIterator[KmeNetwork]:
    async with chain_network(kme_pki_dir) as net:
        yield net


def client_tls_context(net: KmeNetwork, sae_id: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(net.pki.ca_cert))
    ctx.load_cert_chain(str(net.pki.sae_cert(sae_id)), str(net.pki.sae_key(sae_id)))
    return ctx


class RawSae:
    """One SAE talking raw HTTPS to one KME. ``request`` returns (status, JSON or None, headers)."""

    def __init__(self, net: KmeNetwork, sae_id: str, kme_id: str) -> None:
        self.net, self.sae_id, self.kme_id = net, sae_id, kme_id
        self.base = net.url(kme_id)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_tls_context(net, sae_id)),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )

    async def request(
        self, method: str, path: str, *, json: Any = None, data: bytes | str | None = None,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        async with self.session.request(method, self.base + path, json=json, data=data,
                                        params=params) as resp:
            raw = await resp.read()
            body = await resp.json(content_type=None) if raw else None
            return resp.status, body, dict(resp.headers)

    async def enc_keys(self, slave: str, **body: Any) -> tuple[int, Any, dict[str, str]]:
        return await self.request("POST", f"/api/v1/keys/{slave}/enc_keys", json=body)

    async def dec_keys(self, master: str, key_ids: list[str]) -> tuple[int, Any, dict[str, str]]:
        return await self.request("POST", f"/api/v1/keys/{master}/dec_keys",
                                  json={"key_IDs": [{"key_ID": k} for k in key_ids]})

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def raw_sae() -> AsyncIterator[Callable[[KmeNetwork, str, str], RawSae]]:
    """Factory ``raw_sae(net, sae_id, kme_id)``; every helper made is closed afterwards."""
    made: list[RawSae] = []

    def make(net: KmeNetwork, sae_id: str, kme_id: str) -> RawSae:
        helper = RawSae(net, sae_id, kme_id)
        made.append(helper)
        return helper

    yield make
    for helper in made:
        await helper.close()

