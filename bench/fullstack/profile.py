"""Where a daemon's CPU per rekey goes: py-spy samples of both running daemons under rotation,
grouped by component and scaled to the measured on-CPU ms per rekey.

    .venv/bin/python -m bench.fullstack.profile [--tunnels 16] [--seconds 20]
    .venv/bin/python -m bench.fullstack.profile --tunnels 10000 --interval 120 --settle 100
        # the site-router load: sampled once the first rotations after the mass start run

py-spy (PyPI) samples the thread holding the GIL (``--gil``), i.e. Python and the C it calls
with the GIL held (the crypto, JSON); time in system calls that release the GIL (fsync, socket
writes) is not in the samples but is in the schedstat CPU, so the table scales the component
shares to the CPU *minus* what the samples cannot see. Each sample's component is that of the
innermost frame that matches one (crypto before the protocol that calls it, logging before the
daemon code that emits). Raw collapsed stacks stay in bench/results/profile-<site>.txt.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.fullstack.gateways import GatewayPair
from bench.fullstack.procstat import sample

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"

#: (component, substrings of a frame); the innermost frame matching any wins.
COMPONENTS = (
    ("crypto (ML-KEM, X25519, HKDF, AES-GCM)", ("cryptography/", "hashlib", "hmac.py")),
    ("state file (json, mkstemp, rename)", ("daemon/state.py", "daemon/commit.py",
                                            "tempfile.py")),
    ("logging + telemetry", ("gateway/telemetry/", "structlog/", "logging/", "json/encoder")),
    ("KMS client (aiohttp, TLS, ETSI 014)", ("gateway/kms/", "aiohttp/", "sslproto.py",
                                            "ssl.py", "yarl/", "multidict/")),
    ("protocol core (messages, transcript, state machine)", ("gateway/protocol/rekey.py",
                                                              "gateway/protocol/machine.py",
                                                              "gateway/protocol/wire.py",
                                                              "gateway/protocol/messages.py",
                                                              "gateway/protocol/combiner.py",
                                                              "gateway/protocol/channel.py",
                                                              "gateway/protocol/")),
    ("daemon (actions, keeper, schedule, status)", ("gateway/daemon/", "gateway/dataplane/")),
    ("asyncio event loop, streams, selectors", ("asyncio/", "selectors.py")),
)


def classify(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in COMPONENTS:
            if any(n in frame for n in needles):
                return name
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--interval", type=float, default=1.0, help="rekey_interval, seconds")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between every tunnel keyed and the sampling")
    ap.add_argument("--source", type=Path, default=ROOT,
                    help="checkout whose daemons run (default: this one, not the installed "
                         "package)")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with GatewayPair(args.tunnels, args.interval, max(4.0, args.interval * 1.5),
                     source=args.source) as pair:
        pair.wait_keyed(60 + args.tunnels * 0.05)
        time.sleep(args.settle)
        for s in pair.sites:
            s.log.skip()
        before = {s.name: sample(s.pid) for s in pair.sites}
        outs = {s.name: RESULTS / f"profile-{s.name}.txt" for s in pair.sites}
        procs = [subprocess.Popen([spy, "record", "--gil", "--nonblocking", "--format", "raw",
                                   "-r", str(args.rate), "-d", f"{args.seconds:g}",
                                   "-p", str(s.pid), "-o", str(outs[s.name])],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for s in pair.sites]
        for p in procs:
            p.wait(args.seconds + 60)
        after = {s.name: sample(s.pid) for s in pair.sites}
        # Since the skip() above: a new JsonLog would read from the start of the file and count
        # the first keying of every tunnel too (at 10,000 tunnels that halved the figure).
        rekeys = statistics_mean([len(s.log.read(frozenset({"tunnel_rekeyed"})))
                                  for s in pair.sites])
        pair.check_alive()
    report: dict[str, object] = {"tunnels": args.tunnels}
    for name, path in outs.items():
        counts: collections.Counter[str] = collections.Counter()
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack:
                counts[classify(stack)] += int(n)
        total = sum(counts.values())
        cpu_ms = (after[name].cpu_ns - before[name].cpu_ns) / 1e6
        seen_ms = total / args.rate * 1000
        per_rekey = cpu_ms / rekeys if rekeys else float("nan")
        report[name] = {
            "cpu_ms_per_rekey_schedstat": round(per_rekey, 3),
            "gil_held_share_of_cpu": round(min(seen_ms / cpu_ms, 1.0), 3) if cpu_ms else None,
            "ms_per_rekey_by_component": {
                k: round(v / total * min(seen_ms, cpu_ms) / rekeys, 3)
                for k, v in counts.most_common()} if total and rekeys else {},
            "ms_per_rekey_outside_gil (syscalls: fsync, sockets)":
                round(max(cpu_ms - seen_ms, 0.0) / rekeys, 3) if rekeys else None,
        }
    print(json.dumps(report, indent=1))
    return 0


def statistics_mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    sys.exit(main())
