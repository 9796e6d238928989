"""`qkd-gateway run` start-up failures an operator can fix are one line, not a traceback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.config.sitefiles import BASE

pytestmark = pytest.mark.netns  # creates nothing, but talks to wireguard-go's socket dir as root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go")
def test_missing_adopted_interface_is_a_one_line_error(site_dir: Path) -> None:
    text = BASE.replace(
        "      private_key: {file: keys/alpha/wireguard.key}\n", "      adopt: true\n"
        "      backend: userspace\n").replace("      allowed_ips: [10.2.0.0/16]\n", "")
    text = text.replace("interface: wg-beta", "interface: qgwnosuch0")
    text += (f"state_dir: {site_dir}/state-run\ncontrol_socket: {site_dir}/run.sock\n"
             f"listen: {{address: 127.0.0.1, port: {_free_port()}}}\n"
             "telemetry: {log: {format: json}}\n")
    path = site_dir / "run-adopt.yaml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "qkd-gateway: cannot start:" in proc.stderr
    assert "qgwnosuch0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_config_starts_nothing(site_dir: Path) -> None:
    path = site_dir / "run-bad.yaml"
    path.write_text(BASE.replace("kind: wireguard", "kind: wireguardd"))
    proc = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "nothing was started" in proc.stderr and "tunnels[0].kind (line" in proc.stderr
