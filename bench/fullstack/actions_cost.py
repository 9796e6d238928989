"""The action runner's hand-off cost per action, this checkout against another, in one process.

    .venv/bin/python -m bench.fullstack.actions_cost --source /tmp/commit3-before [--actions N]

Both ``gateway/daemon/actions.py`` files are loaded side by side (the other one from
``--source``, with this checkout's imports) and fed the same stream: ``Retire`` actions for
tunnels without a keeper (nothing to do but the hand-off), ``--tunnels`` per loop iteration
(default 1: each action arrives on its own, as a rekey's actions do, each after a network
round trip), until every one has run. Reported: CPU µs per action, alternating
old/new ``--pairs`` times, and the ratios new/old.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway.protocol import Retire
from gateway.telemetry import TelemetryBus

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


async def _run(mod: ModuleType, actions: int, tunnels: int) -> float:
    runner: Any = mod.ActionRunner(pools={}, sources={}, keepers={}, bus=TelemetryBus(None),
                                   feed=lambda e: None)
    done = 0
    total = actions // tunnels * tunnels
    finished = asyncio.Event()
    perform = runner._perform

    async def counted(action: Any) -> None:
        nonlocal done
        await perform(action)
        done += 1
        if done == total:
            finished.set()

    runner._perform = counted
    task = asyncio.get_running_loop().create_task(runner.run())
    await asyncio.sleep(0)
    names = [f"t{i}" for i in range(tunnels)]
    cpu0 = time.process_time()
    for i in range(actions // tunnels):
        for name in names:
            runner.submit(Retire(name, i))
        await asyncio.sleep(0)
    await finished.wait()
    cpu = time.process_time() - cpu0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return cpu / done * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="the other checkout (before)")
    ap.add_argument("--actions", type=int, default=50_000)
    ap.add_argument("--tunnels", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    old = _load(args.source / "gateway" / "daemon" / "actions.py", "bench_actions_old")
    new = _load(ROOT / "gateway" / "daemon" / "actions.py", "bench_actions_new")
    ratios = []
    for pair in range(args.pairs):
        res = {side: asyncio.run(_run(mod, args.actions, args.tunnels))
               for side, mod in (("old", old), ("new", new))}
        ratios.append(res["new"] / res["old"])
        print(json.dumps({"pair": pair + 1, "us_per_action":
                          {k: round(v, 2) for k, v in res.items()}}), flush=True)
    print(json.dumps({"ratio_new_over_old": [round(r, 3) for r in ratios],
                      "median": round(statistics.median(ratios), 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
