"""What replacing a state file costs: a fresh file per save against the spare written in place.

    .venv/bin/python -m bench.fullstack.state_swap [--files 1000] [--batch 4,40] [--rounds 3]

A rotating daemon rewrites every tunnel's file at every rekey (gateway.daemon.commit). "fresh"
is how it did until the spare: a new temporary file per save (``tempfile.mkstemp``), the batch's
sync, a rename over the old file (which frees the old inode), one directory fsync. "spare" is
``commit.write_durably`` now: the file's spare written in place, the same sync, the names
swapped (``renameat2`` RENAME_EXCHANGE), one directory fsync: no inode made or freed. Both
write ``--files`` files of a directory under the working directory (not /tmp, which may be a
tmpfs) round after round, in batches of ``--batch`` (a few files: a quiet daemon's fsync per
file; 40: a busy one's syncfs), alternating the two ways. Reported per file: CPU of the writing
thread (user + kernel: on ext4 a fresh inode per save is mostly the kernel's inode allocator
skipping recently freed inodes, so "fresh" grows with how many inodes the file system freed
lately) and wall time; then spare / fresh per batch size (medians of the rounds). Every file is
written twice before the rounds: a file's second save creates its spare (a new inode, as
"fresh"), from the third on it is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.daemon import commit


def fresh(items: Mapping[Path, bytes]) -> int:
    """The state directory's write before the spare (baseline): temporary file, sync, rename."""
    written: list[tuple[str, Path]] = []
    try:
        for path, data in items.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            written.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        directory = next(iter(items)).parent
        if commit._SYNCFS is not None and len(items) >= commit.SYNCFS_FROM:
            commit._sync_batch([], (directory,))
        else:
            for tmp, _ in written:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for tmp, path in written:
            os.replace(tmp, path)
        written.clear()
    finally:
        for tmp, _ in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    commit._fsync_dir(next(iter(items)).parent)
    return 1


def one_round(write: Callable[[Mapping[Path, bytes]], int], directory: Path, files: int,
              batch: int, epoch: int) -> tuple[float, float]:
    """(thread CPU us per file, wall us per file) of rewriting every file once."""
    payload = json.dumps({"version": 2, "tunnel": "t", "epoch": epoch, "activated_at": 1.0,
                          "key_ids": ["0f2c8a0e-8d7b-4c55-9b7e-2ad1a3f2c001"],
                          "key_fingerprint": "ab" * 32}).encode()
    cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
    for start in range(0, files, batch):
        write({directory / f"t{i}.json": payload for i in range(start, min(start + batch, files))})
    return ((time.thread_time_ns() - cpu0) / 1e3 / files,
            (time.perf_counter_ns() - wall0) / 1e3 / files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--batch", default="4,40", help="files per batch, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path.cwd())
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix=".bench-swap-", dir=args.dir))
    ways = {"fresh": fresh, "spare": commit.write_durably}
    summary: dict[str, object] = {}
    try:
        for batch in (int(b) for b in args.batch.split(",")):
            dirs = {}
            for name in ways:  # each way its own directory, every file written twice first
                dirs[name] = root / f"{name}-{batch}"  # (the second save makes the spare)
                dirs[name].mkdir()
                for warm in (-2, -1):
                    one_round(ways[name], dirs[name], args.files, batch, warm)
            cpu: dict[str, list[float]] = {n: [] for n in ways}
            for r in range(args.rounds):
                for name, write in ways.items():
                    c, w = one_round(write, dirs[name], args.files, batch, r + 1)
                    cpu[name].append(c)
                    print(json.dumps({"batch": batch, "way": name, "round": r,
                                      "cpu_us_per_file": round(c, 1),
                                      "wall_us_per_file": round(w, 1)}), flush=True)
            summary[f"batch_{batch}_cpu_spare_over_fresh"] = round(
                statistics.median(cpu["spare"]) / statistics.median(cpu["fresh"]), 3)
        print(json.dumps(summary))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
