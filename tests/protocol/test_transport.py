"""Two endpoints over real loopback TCP: handshake, rekeys with real QKD keys, hostile clients.

The multipath test fetches QKD keys over ETSI GS QKD 014 with mutual TLS from two independent
simulated KME networks (gateway.kms.sim), one per KMS path, so no single network holds the key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.identity import SiteIdentity
from gateway.kms import Etsi014Client, KmsError, RetryPolicy
from gateway.kms.sim import KmeNetwork
from gateway.protocol import (
    Action,
    Activate,
    AllocateSpi,
    Endpoint,
    FetchQkdKeys,
    Installed,
    InstallKeys,
    KeysFetched,
    KeysFetchFailed,
    KeysTakeFailed,
    KeysTaken,
    Kind,
    Mode,
    Node,
    PeerAddress,
    PeerConfig,
    SessionUp,
    SpiAllocated,
    TakeQkdKeys,
    Timers,
    TunnelKeys,
    TunnelPolicy,
)
from gateway.protocol.messages import FrameType
from gateway.protocol.wire import encode_frame
from tests.protocol.harness import KeyLink, Site

pytestmark = pytest.mark.unit
LOOP = "127.0.0.1"
TIMERS = Timers(handshake_timeout=0.6, rekey_after=0.4, rekey_after_backup=0.6, reject_after=3.0,
                rekey_timeout=2.0, retry_base=0.05, retry_cap=0.3, keepalive_interval=0.3,
                dead_after=2.0, retire_grace=0.3)
Ids = tuple[SiteIdentity, SiteIdentity]


class EtsiDaemon:
    """Performs the core's actions for real: ETSI 014 calls to the site's KMEs, SPI counter."""

    def __init__(self, clients: dict[str, Etsi014Client]) -> None:
        self.clients = clients
        self.endpoint: Endpoint | None = None
        self.installed: dict[tuple[str, int], TunnelKeys] = {}
        self.active: dict[str, int] = {}
        self.activated: dict[str, list[int]] = {"wg0": [], "esp0": []}
        self.spi = 0x5000
        self.qkd_keys: list[bytes] = []  # every QKD key seen, for the leak scan
        self._tasks: set[asyncio.Task[None]] = set()

    def on_action(self, a: Action) -> None:
        if isinstance(a, TakeQkdKeys | FetchQkdKeys):
            task = asyncio.get_running_loop().create_task(self._kms(a))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(a, AllocateSpi):
            self.spi += 1
            self._feed(SpiAllocated(a.tunnel, a.epoch, self.spi))
        elif isinstance(a, InstallKeys):
            self.installed[(a.tunnel, a.epoch)] = a.keys
            self._feed(Installed(a.tunnel, a.epoch))
        elif isinstance(a, Activate):
            assert a.epoch > self.active.get(a.tunnel, 0)
            self.active[a.tunnel] = a.epoch
            self.activated.setdefault(a.tunnel, []).append(a.epoch)

    def _feed(self, ev: Any) -> None:
        assert self.endpoint is not None
        asyncio.get_running_loop().call_soon(self.endpoint.handle, ev)

    async def _kms(self, a: TakeQkdKeys | FetchQkdKeys) -> None:
        client = self.clients[a.kms]
        try:
            if isinstance(a, TakeQkdKeys):
                keys = await client.get_keys(a.slave_sae_id, a.n, 256)
                self.qkd_keys += [k.key.reveal() for k in keys]
                self._feed(KeysTaken(a.tunnel, a.epoch, a.kms, tuple(keys)))
            else:
                keys = await client.get_keys_by_id(a.master_sae_id, a.key_ids)
                self._feed(KeysFetched(a.tunnel, a.epoch, a.kms, tuple(keys)))
        except KmsError as exc:
            fail = KeysTakeFailed if isinstance(a, TakeQkdKeys) else KeysFetchFailed
            self._feed(fail(a.tunnel, a.epoch, a.kms, type(exc).__name__))


async def _cut(reader: asyncio.StreamReader, timeout: float) -> None:
    """Wait until the server closes the connection (EOF, or RST when it left our bytes unread)."""
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(100), timeout) == b""


async def _until(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _nodes(ids: Ids, pols: list[TunnelPolicy], timers: Timers = TIMERS) -> tuple[Node, Node]:
    a = Node(ids[0], "SAE_A", {"b": PeerConfig("SAE_B", ids[1].public(), tuple(pols))},
             timers=timers)
    b = Node(ids[1], "SAE_B", {"a": PeerConfig("SAE_A", ids[0].public(), tuple(pols))},
             timers=timers)
    return a, b


async def test_multipath_rekeys_over_tcp_with_etsi014_kmes(ids: Ids, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    pols = [TunnelPolicy("wg0", Mode.QKD_PQC, ("path1", "path2")),
            TunnelPolicy("esp0", Mode.QKD_PQC, ("path1",), Kind.ESP)]
    nets = [KmeNetwork(tmp_path / f"pki{i}", kmes={f"KME_A{i}": (LOOP, 0), f"KME_B{i}": (LOOP, 0)},
                       links=[(f"KME_A{i}", f"KME_B{i}")],
                       saes={"SAE_A": f"KME_A{i}", "SAE_B": f"KME_B{i}"}) for i in (1, 2)]
    retry = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)

    def client(net: KmeNetwork, i: int, side: str) -> Etsi014Client:
        kme, sae = f"KME_{side}{i}", f"SAE_{side}"
        return Etsi014Client(name=f"path{i}", url=net.url(kme), kme_id=kme,
                             ca_file=net.pki.ca_cert, cert_file=net.pki.sae_cert(sae),
                             key_file=net.pki.sae_key(sae), timeout=2.0, retry=retry)

    node_a, node_b = _nodes(ids, pols)
    with structlog.testing.capture_logs() as logs:
        async with contextlib.AsyncExitStack() as stack:
            for net in nets:
                await stack.enter_async_context(net)
            da = EtsiDaemon({f"path{i}": client(n, i, "A") for i, n in enumerate(nets, 1)})
            db = EtsiDaemon({f"path{i}": client(n, i, "B") for i, n in enumerate(nets, 1)})
            for d in (da, db):
                for c in d.clients.values():
                    stack.push_async_callback(c.aclose)
            ea, eb = Endpoint(node_a, da.on_action), Endpoint(node_b, db.on_action)
            da.endpoint, db.endpoint = ea, eb
            stack.push_async_callback(ea.aclose)
            stack.push_async_callback(eb.aclose)
            port = await eb.listen(LOOP, 0)
            ea.dial(PeerAddress("b", LOOP, port))
            await _until(lambda: min(len(d.activated[t]) for d in (da, db)
                                     for t in ("wg0", "esp0")) >= 4, 20)
            stock = [nets[0].link_stock("KME_A1", "KME_B1"), nets[1].link_stock("KME_A2", "KME_B2")]
    for tunnel, n_paths in (("wg0", 2), ("esp0", 1)):
        last = min(da.active[tunnel], db.active[tunnel])
        epochs = sorted(e for (t, e) in set(da.installed) & set(db.installed)
                        if t == tunnel and e <= last)
        assert len(epochs) >= 4
        for epoch in epochs:
            ka, kb = da.installed[(tunnel, epoch)], db.installed[(tunnel, epoch)]
            assert ka.wg_psk == kb.wg_psk and ka.esp_out == kb.esp_in and ka.esp_in == kb.esp_out
            assert len(ka.key_ids) == n_paths
    assert stock[0] < 1000 and stock[1] < 1000  # keys really came out of both networks
    secrets = [k.reveal() for v in da.installed.values() for k in (v.wg_psk, v.esp_in, v.esp_out)]
    secrets += da.qkd_keys
    assert len(da.qkd_keys) >= 8
    text = repr(logs) + capsys.readouterr().out + capsys.readouterr().err
    for s in secrets:
        assert s.hex() not in text and base64.b64encode(s).decode() not in text
    assert any(e["event"] == "session_up" for e in logs)


async def _serve_pair(ids: Ids, stack: contextlib.AsyncExitStack, timers: Timers = TIMERS,
                      **kw: Any) -> tuple[Site, Site, Endpoint, Endpoint, int]:
    """B listens (with ``kw`` for its Endpoint); A is ready to dial it."""
    pols = [TunnelPolicy("t", Mode.QKD_PQC, ("k1",))]
    node_a, node_b = _nodes(ids, pols, timers)
    links = {"k1": KeyLink("k1")}
    sa, sb = Site(node_a, links), Site(node_b, links)
    loop = asyncio.get_running_loop()
    ea = Endpoint(node_a, lambda a: _perform(loop, sa, ea, a))
    eb = Endpoint(node_b, lambda a: _perform(loop, sb, eb, a), **kw)
    stack.push_async_callback(ea.aclose)
    stack.push_async_callback(eb.aclose)
    port = await eb.listen(LOOP, 0)
    return sa, sb, ea, eb, port


def _perform(loop: asyncio.AbstractEventLoop, site: Site, ep: Endpoint, a: Action) -> None:
    ev = site.perform(a)
    if ev is not None:
        loop.call_soon(ep.handle, ev)


async def test_silent_and_trickling_peers_are_cut_by_the_handshake_timeout(ids: Ids) -> None:
    async with contextlib.AsyncExitStack() as stack:
        _, _, _, eb, port = await _serve_pair(ids, stack)
        _, w_silent = await asyncio.open_connection(LOOP, port)
        r_trickle, w_trickle = await asyncio.open_connection(LOOP, port)
        r_silent = _
        t0 = time.monotonic()

        async def trickle() -> None:
            hello_start = encode_frame(FrameType.HELLO, b"\x00" * 2000)
            for byte in hello_start:
                w_trickle.write(bytes([byte]))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        await _cut(r_silent, 3.0)
        silent_cut = time.monotonic() - t0
        await _cut(r_trickle, 3.0)
        trickle_cut = time.monotonic() - t0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
        w_silent.close()
        w_trickle.close()
        # Cut by the handshake timeout (0.6 s), not later by the Hello timeout (3 s): the
        # upper bound is that, not a guess at the loop's latency (a loaded CI machine is slow).
        assert TIMERS.handshake_timeout < TIMERS.hello_timeout
        assert TIMERS.handshake_timeout <= silent_cut < TIMERS.hello_timeout
        assert TIMERS.handshake_timeout <= trickle_cut < TIMERS.hello_timeout
        assert eb.node.pending_connections() == 0


async def test_pending_connections_are_limited_per_source(ids: Ids) -> None:
    async with contextlib.AsyncExitStack() as stack:
        _, _, _, eb, port = await _serve_pair(ids, stack)
        conns = []
        for _ in range(10):
            with contextlib.suppress(ConnectionResetError):  # a refusal is a reset
                conns.append(await asyncio.open_connection(LOOP, port))
        await _until(lambda: eb.rejected == 6, 2.0)  # MAX_PENDING_PER_SOURCE = 4
        assert eb.node.pending_connections() == 4
        other = await asyncio.open_connection(LOOP, port, local_addr=("127.0.0.2", 0))
        await asyncio.sleep(0.1)
        assert eb.node.pending_connections() == 5 and eb.rejected == 6  # another source
        for _, w in [*conns, other]:
            w.close()


async def test_a_flood_from_other_sources_cannot_lock_out_the_pinned_peer(ids: Ids) -> None:
    """Issue 9 item 1: 32 idle connections used to fill the (global) pending limit and lock the
    real peer out. Now: per-source caps, a reserved slot for the peer's address, and idle
    connections are cut at hello_timeout."""
    patient = dataclasses.replace(TIMERS, hello_timeout=30.0, handshake_timeout=30.0)
    async with contextlib.AsyncExitStack() as stack:
        sa, sb, ea, eb, port = await _serve_pair(
            ids, stack, patient, max_pending=16, peers=[PeerAddress("a", LOOP, 0)])
        idle = []
        for i in range(2, 52):  # 50 attacker addresses, 4 connections each: 200 idle connections
            for _ in range(4):
                with contextlib.suppress(OSError):
                    idle.append(await asyncio.open_connection(
                        LOOP, port, local_addr=(f"127.0.0.{i}", 0)))
        await _until(lambda: eb.node.pending_connections() == 16, 2.0)  # the global cap is full
        ea.dial(PeerAddress("b", LOOP, port))  # the real peer, from 127.0.0.1
        await _until(lambda: eb.node.session_conn("a") is not None, 5.0)
        assert eb.node.pending_connections() == 16  # the attackers still hold every slot
        await _until(lambda: sb.active.get("t", 0) >= 3, 5.0)
        assert sa.keys("t").wg_psk == sb.keys("t").wg_psk
        for _, w in idle:
            w.close()


async def test_an_idle_endpoint_sleeps_until_its_next_deadline(ids: Ids) -> None:
    """Issue 12: the transport used to tick every 50 ms and each dialer polled every 200 ms."""
    slow = Timers(keepalive_interval=5.0, dead_after=20.0, rekey_after=60.0,
                  rekey_after_backup=65.0, reject_after=90.0)
    pols = (TunnelPolicy("t", Mode.PQC),)
    node_a = Node(ids[0], "SAE_A", {"b": PeerConfig("SAE_B", ids[1].public(), pols)}, timers=slow)
    node_b = Node(ids[1], "SAE_B", {"a": PeerConfig("SAE_A", ids[0].public(), pols)}, timers=slow)
    sa, sb = Site(node_a, {}), Site(node_b, {})
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        ea = Endpoint(node_a, lambda a: _perform(loop, sa, ea, a))
        eb = Endpoint(node_b, lambda a: _perform(loop, sb, eb, a))
        stack.push_async_callback(ea.aclose)
        stack.push_async_callback(eb.aclose)
        port = await eb.listen(LOOP, 0)
        ea.dial(PeerAddress("b", LOOP, port))
        await _until(lambda: sa.active.get("t") == sb.active.get("t") == 1, 5.0)
        await asyncio.sleep(0.2)
        before = ea.wakeups + eb.wakeups
        await asyncio.sleep(2.0)
        # Nothing is due for 5 s (the first keepalive): no timer fired. 50 ms ticks gave 80.
        assert ea.wakeups + eb.wakeups - before == 0
        deadline = node_a.next_deadline()
        assert deadline is not None and deadline - loop.time() > 2.0


async def test_rotation_continues_while_a_client_sends_garbage(ids: Ids) -> None:
    async with contextlib.AsyncExitStack() as stack:
        sa, sb, ea, eb, port = await _serve_pair(ids, stack)
        ea.dial(PeerAddress("b", LOOP, port))
        await _until(lambda: sb.active.get("t", 0) >= 1, 5.0)
        start = sb.active["t"]
        attacks = [
            b"GET / HTTP/1.1\r\n\r\n",  # garbage: foreign version byte
            encode_frame(FrameType.HELLO, b"\x00\x01\x00"),  # truncated hello
            bytes([1, 1, 0xFF, 0xFF]) + b"x" * 100,  # oversized frame header
            encode_frame(FrameType.RECORD, b"\x00" * 40),  # a record before any handshake
            encode_frame(FrameType.FINISH, b"\x00" * 10),  # finish before hello
        ]
        closed_after: list[float] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for data in attacks:
                t0 = time.monotonic()
                try:
                    r, w = await asyncio.open_connection(LOOP, port)
                except ConnectionResetError:  # refused by the source's connection rate limit
                    closed_after.append(time.monotonic() - t0)
                    continue
                t0 = time.monotonic()
                with contextlib.suppress(ConnectionResetError):
                    w.write(data)
                await _cut(r, 2.0)
                closed_after.append(time.monotonic() - t0)
                w.close()
        # malformed input is cut at once, not at the 0.6 s handshake timeout
        assert statistics.median(closed_after) < 0.3
        assert sb.active["t"] >= start + 3  # the good peer kept rotating meanwhile
        assert sa.keys("t").wg_psk == sb.keys("t").wg_psk
        assert eb.node.session_conn("a") is not None


async def test_reauthentication_redials_and_keys_keep_rotating(ids: Ids) -> None:
    timers = Timers(handshake_timeout=0.6, reauth_interval=0.8, rekey_after=0.25,
                    rekey_after_backup=0.4, reject_after=3.0, rekey_timeout=2.0,
                    retry_base=0.05, retry_cap=0.3, keepalive_interval=0.3, dead_after=2.0)
    pols = (TunnelPolicy("t", Mode.QKD_PQC, ("k1",)),)
    node_a = Node(ids[0], "SAE_A", {"b": PeerConfig("SAE_B", ids[1].public(), pols)},
                  timers=timers)
    node_b = Node(ids[1], "SAE_B", {"a": PeerConfig("SAE_A", ids[0].public(), pols)},
                  timers=timers)
    links = {"k1": KeyLink("k1")}
    sa, sb = Site(node_a, links), Site(node_b, links)
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        ea = Endpoint(node_a, lambda a: _perform(loop, sa, ea, a))
        eb = Endpoint(node_b, lambda a: _perform(loop, sb, eb, a))
        stack.push_async_callback(ea.aclose)
        stack.push_async_callback(eb.aclose)
        port = await eb.listen(LOOP, 0)
        with structlog.testing.capture_logs() as logs:
            ea.dial(PeerAddress("b", LOOP, port))
            await _until(lambda: sum(isinstance(x, SessionUp) for x in sb.actions) >= 3, 5.0)
    reasons = [e.get("reason") for e in logs if e["event"] == "connection_closed"]
    assert "reauthenticate" in reasons
    epochs = [x.epoch for x in sb.actions if isinstance(x, Activate)]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs) >= 3
    common = set(sa.installed) & set(sb.installed)
    assert len(common) >= 3
    assert all(sa.installed[k].wg_psk == sb.installed[k].wg_psk for k in common)
