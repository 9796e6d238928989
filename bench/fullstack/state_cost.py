"""What a rekey's state writes cost the daemon, old way against new, alternating in one process.

    .venv/bin/python -m bench.fullstack.state_cost [--saves 400] [--tunnels 10000] [--dir DIR]

* **Tunnel state files** (gateway.daemon.commit): ``--saves`` activations' saves, ``--burst`` per
  loop iteration with ``--pause`` between iterations (default 8 and 5 ms: 1,600 saves/s offered,
  a hub's burst after a restart; ``--burst 1 --pause 0.06``: 16 rekeys/s, one at a time), in a
  directory on the disk under test (default: a temporary directory under the
  working directory, not /tmp, which may be a tmpfs). "sync" writes each file before the save
  returns (the old ``StateStore._write``: fsync, rename, directory fsync on the event loop);
  "group" is the store's committer. Reported: the time the event loop spent inside ``save()``
  per save (blocked), wall time until every file is durable, syncs per save, CPU per save.
  "group0" is the committer without its linger (``commit.LINGER = 0``: a batch as soon as a
  save wakes it), against which ``linger_cpu_new_over_old`` compares "group" (``--burst 1
  --pause 0.012``: the 83 activations/s of 10,000 tunnels every 120 s).
* **The used-QKD-key-ID memory** (gateway.daemon.state.UsedKeyIdsSaver): its full size for
  ``--tunnels`` (4 IDs per tunnel, at least 4,096), CPU per activation when each activation saved
  it (old) and through the saver (new: at most every USED_KEY_IDS_INTERVAL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.daemon import commit
from gateway.daemon.state import StateStore, TunnelState, UsedKeyIdsSaver
from gateway.protocol.keyids import KeyIdMemory


async def state_files(directory: Path, saves: int, mode: str, burst: int = 8,
                      pause: float = 0.005) -> dict[str, Any]:
    store = StateStore(directory)
    store.prepare()
    linger = commit.LINGER
    if mode.startswith("group"):
        commit.LINGER = 0.0 if mode == "group0" else linger
        store.start()
    blocked = 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(saves):
        st = TunnelState(f"t{i % 500}", i, time.time(), (str(uuid.uuid4()),), "qkd+pqc",
                         "qkd+pqc", "boot", time.monotonic(), "ab" * 32)
        s0 = time.perf_counter()
        store.save(st)  # "sync": no committer, written (fsync, rename, dir fsync) before return
        blocked += time.perf_counter() - s0
        if i % burst == burst - 1:
            await asyncio.sleep(pause)
    await store.close()
    commit.LINGER = linger
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    syncs = store.commit.syncs
    return {"mode": mode, "loop_blocked_ms_per_save": round(blocked / saves * 1000, 3),
            "wall_s_all_durable": round(wall, 2), "syncs_per_save": round(syncs / saves, 3),
            "cpu_ms_per_save": round(cpu / saves * 1000, 3)}


def used_key_ids(directory: Path, tunnels: int, activations: int, mode: str) -> dict[str, Any]:
    store = StateStore(directory)
    store.prepare()
    mem = KeyIdMemory()
    mem.configure({("peer", "kms"): tunnels})
    for _ in range(max(4096, 4 * tunnels)):
        mem.add("peer", "kms", [str(uuid.uuid4())])
    store.save_used_key_ids(mem.export())

    async def run() -> float:
        saver = UsedKeyIdsSaver(store, mem.export, lambda: mem.generation, print)
        cpu0 = time.process_time()
        for _ in range(activations):
            mem.add("peer", "kms", [str(uuid.uuid4())])
            if mode == "old":
                store.save_used_key_ids(mem.export())  # each activation, as before
            else:
                saver.moved()
        return time.process_time() - cpu0

    cpu = asyncio.run(run())  # no committer: each save is written before it returns, as before
    size = (directory / "used_key_ids.json").stat().st_size
    return {"mode": mode, "tunnels": tunnels, "file_kb": round(size / 1024),
            "cpu_ms_per_activation": round(cpu / activations * 1000, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saves", type=int, default=400)
    ap.add_argument("--tunnels", type=int, default=10_000)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path.cwd())
    ap.add_argument("--burst", type=int, default=8, help="saves per loop iteration")
    ap.add_argument("--pause", type=float, default=0.005, help="seconds between bursts")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix=".bench-state-", dir=args.dir))
    try:
        ratios: dict[str, list[float]] = {"blocked": [], "wall": [], "cpu": [], "ids": [],
                                          "linger_cpu": []}
        for pair in range(args.pairs):
            res = {}
            for mode in ("sync", "group0", "group"):
                d = root / f"{mode}{pair}"
                res[mode] = asyncio.run(state_files(d, args.saves, mode, args.burst, args.pause))
                print(json.dumps(res[mode]), flush=True)
            ratios["blocked"].append(res["group"]["loop_blocked_ms_per_save"]
                                     / res["sync"]["loop_blocked_ms_per_save"])
            ratios["wall"].append(res["group"]["wall_s_all_durable"]
                                  / res["sync"]["wall_s_all_durable"])
            ratios["cpu"].append(res["group"]["cpu_ms_per_save"] / res["sync"]["cpu_ms_per_save"])
            ratios["linger_cpu"].append(res["group"]["cpu_ms_per_save"]
                                        / res["group0"]["cpu_ms_per_save"])
            ids = {}
            for mode in ("old", "new"):
                ids[mode] = used_key_ids(root / f"ids-{mode}{pair}", args.tunnels, 50, mode)
                print(json.dumps(ids[mode]), flush=True)
            ratios["ids"].append(ids["new"]["cpu_ms_per_activation"]
                                 / ids["old"]["cpu_ms_per_activation"])
        print(json.dumps({f"{k}_new_over_old": [round(v, 4) for v in vs]
                          for k, vs in ratios.items()}))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
