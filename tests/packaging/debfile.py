"""Find or build the .deb under test (shared by tests/packaging and tests/systemd)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["REPO", "deb_under_test"]

REPO = Path(__file__).resolve().parents[2]


def deb_under_test() -> Path:
    """$QKD_GATEWAY_DEB (what `make test-systemd` passes after `make deb`), else build it now
    with packaging/build_deb.sh into build/deb/ (~1 min; downloads the wheels from PyPI)."""
    given = os.environ.get("QKD_GATEWAY_DEB")
    if given:
        path = Path(given)
        assert path.is_file(), f"QKD_GATEWAY_DEB={given} does not exist: run make deb"
        return path
    result = subprocess.run(["bash", str(REPO / "packaging" / "build_deb.sh")],
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])
