"""Rekey throughput of the protocol core against the cost of its cryptography; idle wake-ups.

Two Nodes are driven directly in one process (no TCP, no asyncio): every rekey runs the full
state machine on both sides (RekeyInit / RekeyResp / RekeyConfirm / the acknowledging Keepalive
in AES-GCM records, real ML-KEM-768 + X25519, the combiner, key confirmation, make-before-break
actions) with 256-bit QKD keys from an in-memory key store. The crypto floor times the same
primitives in the same run: ML-KEM-768 keygen + encaps + decaps, 2 X25519 keygens + 2 exchanges,
2 transcript hashes, 2 x 3 cascaded HKDF extracts (ML-KEM, one QKD key, X25519) + 12 expands,
4 HMACs, 4 AES-GCM seals + 4 opens of the records' sizes.

    .venv/bin/python bench/bench_protocol.py [--rekeys 2000] [--json]
    .venv/bin/python bench/bench_protocol.py --scale 1,1000,10000   # CPU per rekey vs tunnels
    .venv/bin/python bench/bench_protocol.py --idle 1,100,10000     # wake-ups/s of idle nodes

The ratio (protocol CPU per rekey / floor) should stay <= 2. ``--idle`` runs two Endpoints over
loopback TCP in a child process (both ends in one process), keys every tunnel, then counts the
event loop's voluntary context switches (/proc: each is a sleep in epoll_wait that ended) and
its CPU time over ``--idle-seconds`` while nothing is due but keepalives (rekey_after 1 h).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from gateway.identity import SiteIdentity
from gateway.protocol import Kind, Mode, Timers, TunnelPolicy
from tests.protocol.harness import Wire, make_pair

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
# Rekey on every tick (rekey_after 0) and never let anything else fire.
BENCH_TIMERS = Timers(handshake_timeout=1e9, rekey_after=0.0, rekey_after_backup=1e9,
                      reject_after=1e9, rekey_timeout=1e9, keepalive_interval=1e9, dead_after=1e9,
                      retire_grace=0.0, reauth_interval=1e9)
# Plaintext sizes of the four records of a qkd+pqc, one-path ESP rekey (from inner.py)
RECORD_SIZES = (1 + 2 + 1 + 8 + 1 + 1 + 2 + 36 + 2 + 1184 + 2 + 32 + 2 + 32 + 4,
                1 + 2 + 1 + 8 + 1 + 2 + 1088 + 2 + 32 + 2 + 32 + 4 + 2 + 48,
                1 + 2 + 1 + 8 + 2 + 48,
                1 + 2 + 2 + 1 + 8 + 16 + 1)


def crypto_floor_once() -> None:
    kem = mlkem.MLKEM768PrivateKey.generate()
    ss, ct = kem.public_key().encapsulate()
    kem.decapsulate(ct)
    xi, xr = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    xi.exchange(xr.public_key())
    xr.exchange(xi.public_key())
    for _ in range(2):
        th = hashlib.sha384(os.urandom(2600)).digest()
        prk = b"salt"
        for _ in range(3):
            prk = hmac.new(prk, ss, hashlib.sha384).digest()
        for n in (32, 36, 36, 48, 48, 16):
            HKDFExpand(hashes.SHA384(), n, b"label" + th).derive(prk)
        hmac.new(prk, th, hashlib.sha384).digest()
        hmac.new(prk, th, hashlib.sha384).digest()
    aead = AESGCM(ss)
    for size in RECORD_SIZES:
        nonce = os.urandom(12)
        aead.decrypt(nonce, aead.encrypt(nonce, b"\0" * size, b"aad"), b"aad")


def time_floor(n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        crypto_floor_once()
    return (time.process_time() - t0) / n


def time_protocol(n: int, tunnels: int = 1) -> tuple[float, float, int]:
    """(wall, CPU) per rekey, both sides, over ``n`` ticks that each rekey every tunnel."""
    ids = SiteIdentity.generate(), SiteIdentity.generate()
    names = ["t"] if tunnels == 1 else [f"t{i:05d}" for i in range(tunnels)]
    a, b = make_pair([TunnelPolicy(x, Mode.QKD_PQC, ("k1",), Kind.ESP) for x in names], ids=ids,
                     timers=BENCH_TIMERS)
    w = Wire(a, b)
    w.open(0.0)

    def completed() -> tuple[int, int]:
        return (sum(a.node.tunnel_status(x).rekeys_completed for x in names),
                sum(b.node.tunnel_status(x).rekeys_completed for x in names))

    first = completed()
    # Keep the harness' action logs from growing without bound during the run.
    a.actions = b.actions = _Discard()
    now = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        now += 1.0
        w.tick(now)
        a.installed.clear()
        b.installed.clear()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    last = completed()
    done = last[0] - first[0]
    assert done == n * tunnels == last[1] - first[1], (done, n)
    return wall / done, cpu / done, done


def time_handshake(n: int) -> float:
    """CPU per control-session handshake, both sides (dual signatures, ML-KEM + X25519)."""
    ids = SiteIdentity.generate(), SiteIdentity.generate()
    total = 0.0
    for _ in range(n):
        a, b = make_pair([], ids=ids, timers=BENCH_TIMERS)
        c0 = time.process_time()
        Wire(a, b).open(0.0)
        total += time.process_time() - c0
        assert a.node.session_conn("b") == 1
    return total / n


class _Discard(list):  # type: ignore[type-arg]
    def append(self, _: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rekeys", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=10,
                    help="alternating floor/protocol rounds; the ratio is the median of the "
                         "rounds' ratios, which cancels most of the load of a shared machine")
    ap.add_argument("--scale", help="comma-separated tunnel counts: CPU per rekey for each")
    ap.add_argument("--idle", help="comma-separated tunnel counts: idle wake-ups for each")
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.idle or args.scale:
        from bench.protocol_idle import idle_rows, scale_rows

        rows = (idle_rows([int(x) for x in args.idle.split(",")], args.idle_seconds)
                if args.idle else scale_rows([int(x) for x in args.scale.split(",")],
                                             time_protocol, time_floor))
        for row in rows:
            print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
        return
    per = max(1, args.rekeys // args.rounds)
    time_floor(50), time_protocol(50)  # warm up
    floors, walls, cpus = [], [], []
    for _ in range(args.rounds):
        floors.append(time_floor(per))
        wall, cpu, _done = time_protocol(per)
        walls.append(wall)
        cpus.append(cpu)
    floor, wall, cpu = statistics.median(floors), statistics.median(walls), statistics.median(cpus)
    ratios = sorted(c / f for c, f in zip(cpus, floors, strict=True))
    result = {
        "rekeys": per * args.rounds,
        "rekeys_per_s": round(1 / wall, 1),
        "cpu_us_per_rekey_both_sides": round(cpu * 1e6, 1),
        "crypto_floor_us": round(floor * 1e6, 1),
        "ratio": round(statistics.median(ratios), 2),
        "ratio_min_max": [round(ratios[0], 2), round(ratios[-1], 2)],
        "handshake_cpu_us_both_sides": round(time_handshake(50) * 1e6, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:30} {v}")


if __name__ == "__main__":
    main()
