"""The systemd units: required settings, measured exposure score, Python under W^X memory.

These read the unit files offline; tests/systemd/ runs them under a real systemd.
"""

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
FAILSAFE = REPO / "systemd" / "qkd-gateway-failsafe.service"
TIMER = REPO / "systemd" / "qkd-gateway-failsafe.timer"
DROPIN = REPO / "systemd" / "dropins" / "wireguard-go.conf"
FAILSAFE_DROPIN = REPO / "systemd" / "dropins" / "wireguard-go-failsafe.conf"
CONFIG = "/etc/qkd-gateway/gateway.yaml"
# Measured with systemd 252 (Debian 12): `systemd-analyze security --offline=true` -> 1.5 "OK".
# The remaining exposure is what a VPN daemon needs: host network, CAP_NET_ADMIN, IP sockets.
MAX_EXPOSURE = 1.5


def _settings(unit: Path = UNIT) -> list[tuple[str, str, str]]:
    section, out = "", []
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(key: str, section: str = "Service", unit: Path = UNIT) -> list[str]:
    return [v for s, k, v in _settings(unit) if s == section and k == key]


def test_unit_declares_the_contract() -> None:
    def one(key: str) -> str:
        values = _values(key)
        assert len(values) == 1, f"{key}: {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert re.fullmatch(r"\d+s", one("WatchdogSec"))
    assert one("ExecStart") == f"/usr/bin/qkd-gateway run --config {CONFIG}"
    assert one("ExecStartPre") == f"/usr/bin/qkd-gateway check-config --quiet {CONFIG}"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
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
    # The names `qkd-gateway keygen --wireguard` writes, plus the KMS client key.
    assert creds == ["ed25519.key", "mldsa65.key", "wireguard.key", "kms-client.key"]
    assert one("User") == "qkd-gateway"
    # PrivateUsers would move the capability into a user namespace, useless for host netlink.
    assert _values("PrivateUsers") == [] and _values("PrivateNetwork") == []
    assert _values("WantedBy", "Install") == ["multi-user.target"]
    # Starting or enabling the daemon arms the failsafe; it stays armed when the daemon stops.
    assert "qkd-gateway-failsafe.timer" in _values("Wants", "Unit")
    assert _values("Also", "Install") == ["qkd-gateway-failsafe.timer"]
    # The old claim that tunnels fail closed by themselves while the daemon is down is gone.
    assert "fail closed meanwhile" not in UNIT.read_text()


def test_the_failsafe_shares_the_daemons_identity_and_sandbox() -> None:
    """Same dynamic user, credentials, state directory and every hardening setting as the
    daemon; the only differences are what a oneshot needs."""
    main = {(k, v) for s, k, v in _settings(UNIT) if s == "Service"}
    failsafe = {(k, v) for s, k, v in _settings(FAILSAFE) if s == "Service"}
    daemon_only = {"Type", "NotifyAccess", "ExecStartPre", "ExecStart", "ExecReload", "Restart",
                   "RestartSec", "WatchdogSec", "TimeoutStartSec", "TimeoutStopSec",
                   "RuntimeDirectory", "RuntimeDirectoryMode"}
    missing = {(k, v) for k, v in main - failsafe if k not in daemon_only}
    assert not missing, f"the failsafe lacks the daemon's {sorted(missing)}"
    (start,) = _values("ExecStart", unit=FAILSAFE)
    assert start == f"/usr/bin/qkd-gateway failsafe --config {CONFIG}"
    assert _values("Type", unit=FAILSAFE) == ["oneshot"]
    # It must not own the runtime directory whose absence its condition tests.
    assert _values("RuntimeDirectory", unit=FAILSAFE) == []
    assert _values("ConditionPathExists", "Unit", FAILSAFE) == [
        "!/run/qkd-gateway/control.sock"]
    assert _values("OnCalendar", "Timer", TIMER) == ["*:*:0/10"]
    assert _values("WantedBy", "Install", TIMER) == ["timers.target"]


def test_the_wireguard_go_dropin_adds_only_the_tun_device_and_its_socket_directory() -> None:
    settings = {(k, v) for s, k, v in _settings(DROPIN) if s == "Service"}
    assert settings == {
        ("BindPaths", "/dev/net/tun"), ("DeviceAllow", "/dev/net/tun rw"),
        ("RuntimeDirectory", "wireguard"), ("RuntimeDirectoryPreserve", "yes"),
        ("KillMode", "process"), ("ExecStopPost", "/bin/rm -f /run/qkd-gateway/control.sock"),
    }
    # The failsafe must see the same (preserved, hence /run/private-backed) socket directory.
    failsafe = {(k, v) for s, k, v in _settings(FAILSAFE_DROPIN) if s == "Service"}
    assert failsafe == {("RuntimeDirectory", "wireguard"), ("RuntimeDirectoryMode", "0750"),
                        ("RuntimeDirectoryPreserve", "yes")}
    assert _values("RuntimeDirectoryMode") == ["0750"]


def _analyze(*extra: str, unit: Path = UNIT) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed: `apt-get install systemd` (Debian package)")
    return subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", *extra, str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("unit", [UNIT, FAILSAFE], ids=lambda p: p.name)
def test_exposure_score_is_at_most_the_measured_value(unit: Path) -> None:
    threshold = round(MAX_EXPOSURE * 10)
    result = _analyze(f"--threshold={threshold}", unit=unit)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    score = float(match.group(1))
    assert score <= MAX_EXPOSURE, result.stdout
    assert match.group(2) == "OK"
    assert result.returncode == 0, result.stderr
    # The threshold really gates: one notch stricter than the measured score must fail.
    assert _analyze(f"--threshold={round(score * 10) - 1}", unit=unit).returncode != 0


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


@pytest.mark.parametrize("unit", [UNIT, FAILSAFE, DROPIN], ids=lambda p: p.name)
def test_every_exec_line_is_a_valid_command_line(unit: Path) -> None:
    """Exec lines must parse with the real CLI, or systemd would fail at start; the others
    are the two plain tools the units use."""
    import shlex

    from gateway.cli.main import build_parser

    lines = [ln.split("=", 1)[1] for ln in unit.read_text().splitlines()
             if ln.startswith(("ExecStart", "ExecStop", "ExecReload"))]
    assert lines
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line.lstrip("-+!@:"))
        if argv[0] in ("/bin/kill", "/bin/rm"):
            assert Path(argv[0]).exists(), argv[0]
            continue
        assert argv[0] == "/usr/bin/qkd-gateway", line
        parser.parse_args(argv[1:])  # SystemExit(2) on an unknown option or missing argument
