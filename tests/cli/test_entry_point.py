"""`qkd-gateway check-config` through the installed console script, as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.config.sitefiles import BASE, assert_no_secrets

pytestmark = pytest.mark.unit

# The console script pip installed next to this interpreter (.venv/bin/qkd-gateway).
SCRIPT = Path(sys.executable).parent / "qkd-gateway"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_console_script_check_config(write_config: Callable[[str], Path], site_dir: Path) -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: run `pip install -e .` in the venv"
    good = write_config(BASE)
    done = _run("check-config", str(good))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[0] == f"{good}: OK"
    assert_no_secrets(done.stdout, [site_dir])

    bad = write_config("site: !!int abc\n")
    done = _run("check-config", str(bad))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"{bad}: 1 problem\n  site (line 1, column 7): cannot be read as a whole number (!!int); "
        "put it in quotes and remove any !! tag\n")
