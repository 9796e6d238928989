"""`make fuzz`: the fuzz tier with the long hypothesis profile (tests/fuzz/profiles.py).

    .venv/bin/python tests/fuzz/run_long.py [EXAMPLES] [pytest args...]

Runs every test marked ``fuzz`` (tests/fuzz/ and the fuzz tests that live next to their
package's other tests) with QKD_FUZZ_PROFILE=long: tests/fuzz/ then draws EXAMPLES inputs per
test (default 20000; the CI profile draws 200). Tests elsewhere pin their own, smaller budgets.
A failure prints the falsifying input and a reproduction blob (@reproduce_failure).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    examples = argv[0] if argv and argv[0].isdigit() else "20000"
    rest = argv[1:] if argv and argv[0].isdigit() else argv
    env = {**os.environ, "QKD_FUZZ_PROFILE": "long", "QKD_FUZZ_EXAMPLES": examples}
    cmd = [sys.executable, "-m", "pytest", "-m", "fuzz", "-p", "no:cacheprovider",
           "--timeout", "0", "-q", *rest]
    print(f"fuzz: {examples} examples per test: {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
