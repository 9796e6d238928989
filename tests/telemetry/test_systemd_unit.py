"""The systemd unit: required settings, measured exposure score, Python under W^X memory."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).parents[2]
UNIT = REPO / "systemd" / "qkd-gateway.service"
# Measured with systemd 252 (Debian 12): `systemd-analyze security --offline=true` -> 1.5 "OK".
# The remaining exposure is what a VPN daemon needs: host network, CAP_NET_ADMIN, IP sockets.
MAX_EXPOSURE = 1.5


def _settings() -> list[tuple[str, str, str]]:
    section, out = "", []
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _settings() if s == section and k == key]


def test_unit_declares_the_contract() -> None:
    def one(key: str) -> str:
        values = _values(key)
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert re.fullmatch(r"\d+s", one("WatchdogSec"))
    assert one("ExecStart") == (
        "/usr/local/bin/qkd-gateway run --config /etc/qkd-gateway/gateway.yaml"
    )
    assert one("ExecStartPre") == (
        "/usr/local/bin/qkd-gateway check-config --quiet /etc/qkd-gateway/gateway.yaml"
    )
    assert one("CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert one("AmbientCapabilities") == "CAP_NET_ADMIN"
    assert set(one("RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    assert _values("SystemCallFilter")[0] == "@system-service"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "MemoryDenyWriteExecute",
        "LockPersonality",
        "RestrictNamespaces",
        "DynamicUser",
    ):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert one("UMask") == "0077"
    assert one("StateDirectory") == one("RuntimeDirectory") == "qkd-gateway"
    creds = [v.split(":", 1)[0] for v in _values("LoadCredential")]
    assert creds == ["identity-ed25519.key", "identity-mldsa65.key", "kms-client.key"]
    # PrivateUsers would move the capability into a user namespace, useless for host netlink.
    assert _values("PrivateUsers") == [] and _values("PrivateNetwork") == []
    assert _values("WantedBy", "Install") == ["multi-user.target"]


def _analyze(*extra: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed: `apt-get install systemd` (Debian package)")
    return subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", *extra, str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_exposure_score_is_at_most_the_measured_value() -> None:
    threshold = round(MAX_EXPOSURE * 10)
    result = _analyze(f"--threshold={threshold}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    score = float(match.group(1))
    assert score <= MAX_EXPOSURE, result.stdout
    assert match.group(2) == "OK"
    assert result.returncode == 0, result.stderr
    # The threshold really gates: one notch stricter than the measured score must fail.
    assert _analyze(f"--threshold={round(score * 10) - 1}").returncode != 0


def test_python_and_gateway_code_run_without_writable_executable_memory() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.telemetry.mdwe_probe"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    verdict = json.loads(result.stdout.strip().splitlines()[-1])
    if not verdict["mdwe"] and "prctl" in verdict["error"]:
        pytest.skip(f"kernel lacks PR_SET_MDWE (Linux >= 6.3): {verdict['error']}")
    assert verdict["ok"], verdict
    assert verdict["modules"] > 10


def test_every_exec_line_is_a_valid_command_line() -> None:
    """ExecStart*/ExecStop* must parse with the real CLI, or systemd would fail at start."""
    import shlex
    from pathlib import Path

    from gateway.cli.main import build_parser

    unit = Path(__file__).resolve().parents[2] / "systemd" / "qkd-gateway.service"
    lines = [
        ln.split("=", 1)[1]
        for ln in unit.read_text().splitlines()
        if ln.startswith(("ExecStart", "ExecStop", "ExecReload"))
    ]
    assert lines
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line.lstrip("-+!@:"))
        assert argv[0].endswith("/qkd-gateway"), line
        parser.parse_args(argv[1:])  # SystemExit(2) on an unknown option or missing argument
