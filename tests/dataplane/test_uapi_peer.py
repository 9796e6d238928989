"""UapiClient.get_peer: one peer's state from a whole-device answer, parsed for that peer only,
over a real Unix socket speaking the UAPI's framing (a canned wireguard-go answer)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.dataplane.errors import BackendCallFailed
from gateway.dataplane.uapi import UapiClient, parse_get

pytestmark = pytest.mark.unit

PUBS = [os.urandom(32) for _ in range(3)]
PSKS = [os.urandom(32) for _ in range(3)]


def _answer(errno: int = 0, private: bool = True) -> str:
    lines = [f"private_key={os.urandom(32).hex()}", "listen_port=51820"] if private else []
    for i, (pub, psk) in enumerate(zip(PUBS, PSKS, strict=True)):
        lines += [f"public_key={pub.hex()}", f"preshared_key={psk.hex()}",
                  "protocol_version=1", f"last_handshake_time_sec={1700000000 + i}",
                  "last_handshake_time_nsec=0", "tx_bytes=1", "rx_bytes=2",
                  "persistent_keepalive_interval=0", f"allowed_ip=10.0.{i}.2/32"]
    return "\n".join([*lines, f"errno={errno}"]) + "\n\n"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[UapiClient, list[str]]]:
    answers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\n\n")
        writer.write(answers.pop(0).encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(tmp_path / "wg0.sock"))
    try:
        yield UapiClient("wg0", directory=tmp_path, timeout=5), answers
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("private", [True, False])
async def test_get_peer_is_the_peer_of_the_whole_parse(
        served: tuple[UapiClient, list[str]], private: bool) -> None:
    client, answers = served
    text = _answer(private=private)
    whole = parse_get(text.rstrip("\n").split("\n"))
    for pub, psk in zip(PUBS, PSKS, strict=True):
        b64 = base64.b64encode(pub).decode()
        answers.append(text)
        peer = await client.get_peer(b64)
        assert peer == whole.peers[b64]
        assert peer is not None and peer.preshared_key is not None
        assert peer.preshared_key.reveal() == psk


async def test_get_peer_of_an_unknown_key_is_none(served: tuple[UapiClient, list[str]]) -> None:
    client, answers = served
    answers.append(_answer())
    assert await client.get_peer(base64.b64encode(os.urandom(32)).decode()) is None


async def test_a_refusal_is_an_error_naming_the_errno(
        served: tuple[UapiClient, list[str]]) -> None:
    client, answers = served
    answers.append("errno=-22\n\n")
    with pytest.raises(BackendCallFailed, match="errno=-22 EINVAL"):
        await client.get_peer(base64.b64encode(PUBS[0]).decode())
    answers.append("garbage\n\n")
    with pytest.raises(BackendCallFailed, match="EPROTO"):
        await client.get()
