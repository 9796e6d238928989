"""The two-path tunnel's key needs BOTH QKD paths: no trusted node of one path determines it.

The RoNaQCI demo's Bucharest-Cluj-Napoca tunnel takes one QKD key from the backbone (trusted
nodes Pitesti, Sibiu, Alba Iulia) and one from the second network (Ploiesti, Brasov, Sighisoara,
Targu Mures). Here the very KME networks of the demo's plan run in-process on loopback; the
product's ETSI GS QKD 014 client takes a key on each path at Bucharest and fetches it by ID at
Cluj-Napoca, and the product's combiner (gateway.protocol.combiner) derives the WireGuard PSK at
both ends. Holding the transcript and both post-quantum secrets fixed (the worst case: an
adversary who knows them), the PSK changes when either path's QKD key changes, so a trusted node,
which knows its own path's key in the clear, still does not know the PSK.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.demo.ronaqci import BACKBONE, SECOND, ronaqci_kms
from gateway.keymaterial import Secret
from gateway.kms import Etsi014Client
from gateway.kms.sim import KmeNetwork, LinkSpec
from gateway.kms.types import QKDKey
from gateway.protocol.combiner import CombinerSecrets, QkdSlot, RekeyTranscript, combine
from gateway.protocol.policy import Kind, Mode

pytestmark = pytest.mark.unit

LOOPBACK = "127.0.0.1"
HUB, SPOKE = "sae-bucharest", "sae-cluj-napoca"
TUNNEL = "bucharest--cluj-napoca"


@pytest.fixture
async def ronaqci_kmes(tmp_path: Path) -> AsyncIterator[KmeNetwork]:
    plan = ronaqci_kms()
    async with KmeNetwork(tmp_path / "pki", kmes={k.kme_id: (LOOPBACK, 0) for k in plan.kmes},
                          links=[LinkSpec(link.a, link.b) for link in plan.links],
                          saes=plan.gateway_saes()) as net:
        yield net


def _client(net: KmeNetwork, network: str, site: str, sae: str) -> Etsi014Client:
    kme = f"kme-{site}" if network == BACKBONE else f"kme-{site}-2"
    return Etsi014Client(name=network, url=net.url(kme), kme_id=kme, ca_file=net.pki.ca_cert,
                         cert_file=net.pki.sae_cert(sae), key_file=net.pki.sae_key(sae))


async def _deliver(net: KmeNetwork, network: str) -> tuple[QKDKey, QKDKey]:
    """One key over ``network``: (as Bucharest took it, as Cluj-Napoca fetched it by ID)."""
    async with _client(net, network, "bucharest", HUB) as hub, \
            _client(net, network, "cluj-napoca", SPOKE) as spoke:
        (taken,) = await hub.get_keys(SPOKE, 1, 256)
        (fetched,) = await spoke.get_keys_by_id(HUB, [taken.key_id])
    return taken, fetched


def _transcript(ids: tuple[str, str]) -> RekeyTranscript:
    # Public values of one rekey, fixed so that only the QKD keys vary below.
    return RekeyTranscript(
        mode=Mode.QKD_PQC, kind=Kind.WIREGUARD, epoch=7, initiator_sae=HUB,
        responder_sae=SPOKE, tunnel=TUNNEL,
        qkd=(QkdSlot(BACKBONE, ids[0]), QkdSlot(SECOND, ids[1])),
        mlkem_ek=b"\x01" * 1184, mlkem_ct=b"\x02" * 1088, x25519_i=b"\x03" * 32,
        x25519_r=b"\x04" * 32, spi_i=0, spi_r=0, nonce_i=b"\x05" * 32, nonce_r=b"\x06" * 32)


# The worst case for the argument: the adversary knows both post-quantum secrets.
KNOWN_MLKEM, KNOWN_X25519 = Secret(b"\x07" * 32), Secret(b"\x08" * 32)


def _psk(transcript: RekeyTranscript, k1: Secret, k2: Secret) -> bytes:
    secrets = CombinerSecrets(mlkem_ss=KNOWN_MLKEM, qkd=(k1, k2), x25519_ss=KNOWN_X25519)
    return combine(secrets, transcript).wg_psk.reveal()


async def test_either_paths_key_changes_the_tunnel_key(ronaqci_kmes: KmeNetwork) -> None:
    net = ronaqci_kmes
    # The two paths, as the KME network routes them, share no KME: no common trusted node.
    west = net.model.route("kme-bucharest", "kme-cluj-napoca")
    east = net.model.route("kme-bucharest-2", "kme-cluj-napoca-2")
    assert west == ["kme-bucharest", "kme-pitesti", "kme-sibiu", "kme-alba-iulia",
                    "kme-cluj-napoca"]
    assert east == ["kme-bucharest-2", "kme-ploiesti-2", "kme-brasov-2", "kme-sighisoara-2",
                    "kme-targu-mures-2", "kme-cluj-napoca-2"]
    assert not set(west) & set(east)

    west_hub, west_spoke = await _deliver(net, BACKBONE)
    east_hub, east_spoke = await _deliver(net, SECOND)
    # Each key really travelled its own path, and both ends hold the same key per path.
    assert west_hub.key_extension == {"qkdgw_path": west}
    assert east_hub.key_extension == {"qkdgw_path": east}
    assert west_hub.key == west_spoke.key and east_hub.key == east_spoke.key
    assert west_hub.key != east_hub.key

    transcript = _transcript((west_hub.key_id, east_hub.key_id))
    at_bucharest = _psk(transcript, west_hub.key, east_hub.key)
    at_cluj = _psk(transcript, west_spoke.key, east_spoke.key)
    assert at_bucharest == at_cluj and len(at_bucharest) == 32

    # Another key delivered on each path (what the next rekey would get, a different value).
    west_other, _ = await _deliver(net, BACKBONE)
    east_other, _ = await _deliver(net, SECOND)
    # Sibiu (path 1) knows the west key: with it fixed, the east key still changes the PSK.
    assert _psk(transcript, west_hub.key, east_other.key) != at_bucharest
    # Brasov (path 2) knows the east key: with it fixed, the west key still changes the PSK.
    assert _psk(transcript, west_other.key, east_hub.key) != at_bucharest
    # And a node that guesses its missing input gets it wrong: random keys in the other slot
    # give a different PSK every time (2^256 candidates, none the real one here).
    guesses = {_psk(transcript, west_hub.key, Secret(os.urandom(32))) for _ in range(8)}
    assert at_bucharest not in guesses and len(guesses) == 8
