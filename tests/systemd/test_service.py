"""The packaged service under a real systemd 252 (PID 1 of a booted Debian 12 root).

One machine for the module, the tests run in order and build on each other: install the .deb on
a fresh root, start the two-site lab, then READY, keys, capabilities, credentials, the failsafe's
condition, reload, the watchdog, the exposure score, stop with keep, the failsafe after a stop and
after a SIGKILL, stop with teardown, purge. Needs root, mmdebstrap, systemd-container, /dev/net/tun
and the Debian mirror (the root and the package's dependencies).

Tests that depend on the daemon side of the lead's contract (not on this branch until merged):
reload (`config` in status, `config_reloaded`), the failsafe subcommand (`tunnel_failed_closed`)
and the daemon holding /run/qkd-gateway/control.sock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd import lab
from tests.systemd.nspawn import Machine

pytestmark = pytest.mark.systemd

FORBIDDEN = re.compile(r"^(linux-image-.*|linux-headers-.*|udev|initramfs-tools.*|dracut.*|"
                       r"apparmor|grub.*|firmware-.*|wireguard-dkms|dkms)$")
CAP_NET_ADMIN = 1 << 12
UNIT = "qkd-gateway.service"


@pytest.fixture(scope="module")
def machine(deb: Path) -> Iterator[Machine]:
    m = Machine.extract("service")
    try:
        m.copy_in(deb, "/var/tmp/qkd-gateway.deb")
        before = m.prepare("dpkg-query -W -f '${Package}\\n' | sort")
        assert before.returncode == 0, before.stderr
        # The documented install: no recommends; wireguard-go because this host has no
        # WireGuard kernel module.
        install = m.prepare(
            "apt-get install -y -q --no-install-recommends /var/tmp/qkd-gateway.deb wireguard-go"
            " > /var/tmp/install.log 2>&1 || { cat /var/tmp/install.log; exit 1; }"
            " && dpkg-query -W -f '${Package}\\n' | sort")
        assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-2000:]
        m.pulled = sorted(set(install.stdout.split()) - set(before.stdout.split()))
        m.boot()
        yield m
    finally:
        m.remove()


@pytest.fixture(scope="module")
def running(machine: Machine) -> Machine:
    lab.setup_lab(machine)
    return machine


def _main_pid(m: Machine) -> int:
    return int(m.show(UNIT, "MainPID")["MainPID"])


def _wait_active(m: Machine, timeout: float = 120) -> dict[str, str]:
    def ready() -> dict[str, str] | None:
        props = m.show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID")
        if props["ActiveState"] == "active" and props["MainPID"] != "0":
            return props
        return None
    result = m.wait("qkd-gateway active (READY=1)", ready, timeout=timeout)
    assert isinstance(result, dict)
    return result


def _wait_keys(m: Machine, different_from: str | None = None, timeout: float = 120) -> str:
    def agreed() -> str | None:
        psk = lab.keys_agree(m)
        return psk if psk and psk != different_from else None
    psk = m.wait("both sites holding the same fresh PSK", agreed, timeout=timeout)
    assert isinstance(psk, str)
    return psk


def test_the_package_installs_on_a_fresh_root_without_surprises(machine: Machine) -> None:
    pulled = machine.pulled
    assert "qkd-gateway" in pulled and "wireguard-tools" in pulled and "python3" in pulled
    assert not [p for p in pulled if FORBIDDEN.match(p)], pulled
    # The private venv runs on Debian's interpreter, not on whatever built the package.
    out = machine.sh("/usr/lib/qkd-gateway/bin/python -c "
                     "'import sys, os; print(sys.version.split()[0], sys.prefix,"
                     " os.path.realpath(sys.executable))'").stdout.split()
    assert out[0].startswith("3.11.") and out[1] == "/usr/lib/qkd-gateway"
    assert out[2] == "/usr/bin/python3.11"
    assert machine.sh("qkd-gateway version").stdout.startswith("qkd-gateway ")
    # Enabling is the operator's choice: installed, loaded, not enabled, not running.
    state = machine.show(UNIT, "UnitFileState", "ActiveState")
    assert state == {"UnitFileState": "disabled", "ActiveState": "inactive"}
    assert machine.sh("stat -c %a:%U /etc/qkd-gateway/credentials").stdout.strip() == "700:root"


def test_ready_is_reached_and_the_tunnel_keys(running: Machine) -> None:
    props = _wait_active(running)
    assert props["SubState"] == "running"
    assert props["StatusText"], "the daemon's STATUS= line"
    first = _wait_keys(running)
    # It rotates: a new shared key within a few rekey intervals.
    _wait_keys(running, different_from=first, timeout=90)


def test_the_service_holds_only_cap_net_admin(running: Machine) -> None:
    status = lab.read_proc_status(running, _main_pid(running))
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == CAP_NET_ADMIN, (field, status[field])
    uid = int(status["Uid"].split()[0])
    assert uid >= 61184, f"DynamicUser range 61184-65519, got {uid}"
    # wireguard-go, started by the daemon, runs under the same user and capability.
    # (no procps in the machine: read /proc directly)
    wg_pid = running.sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null"
                        " | grep -q '^wireguard-go wg-a' && echo ${p#/proc/}; done; true"
                        ).stdout.split()[0]
    wg_status = lab.read_proc_status(running, int(wg_pid))
    assert int(wg_status["CapEff"], 16) == CAP_NET_ADMIN
    assert int(wg_status["Uid"].split()[0]) == uid


def test_private_keys_arrive_through_load_credential(running: Machine) -> None:
    pid = _main_pid(running)
    environ = running.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.splitlines()
    assert f"CREDENTIALS_DIRECTORY=/run/credentials/{UNIT}" in environ
    names = running.sh(f"ls /run/credentials/{UNIT}").stdout.split()
    assert names == ["ed25519.key", "kms-client.key", "mldsa65.key", "wireguard.key"]
    # The service user cannot read the key files themselves, only the credential copies.
    uid = lab.read_proc_status(running, pid)["Uid"].split()[0]
    denied = running.sh(f"setpriv --reuid={uid} --regid={uid} --clear-groups"
                        " cat /etc/qkd-gateway/credentials/ed25519.key", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # The configuration names credentials only: no key path, no key.
    config = running.sh(f"cat {lab.A_CONFIG}").stdout
    assert "{credential: ed25519.key}" in config and "credentials/" not in config


def test_the_failsafe_spawns_nothing_while_the_daemon_runs(running: Machine) -> None:
    m = running
    m.wait("control socket", lambda: m.sh("test -S /run/qkd-gateway/control.sock",
                                          check=False).returncode == 0, timeout=60)
    props = ("ConditionResult", "ConditionTimestampMonotonic", "ExecMainStartTimestampMonotonic")
    timer = "qkd-gateway-failsafe.timer"
    assert m.show(timer, "ActiveState")["ActiveState"] == "active"
    before = m.show("qkd-gateway-failsafe.service", *props)
    start = int(before["ConditionTimestampMonotonic"])

    def two_ticks() -> bool:
        # Each tick of the timer makes PID 1 evaluate the condition again.
        now = m.show("qkd-gateway-failsafe.service", "ConditionTimestampMonotonic")
        return int(now["ConditionTimestampMonotonic"]) >= start + 10_000_000
    m.wait("two failsafe timer ticks", two_ticks, timeout=60)
    after = m.show("qkd-gateway-failsafe.service", *props)
    assert after["ConditionResult"] == "no"
    assert int(after["ConditionTimestampMonotonic"]) > int(before["ConditionTimestampMonotonic"])
    # PID 1 skipped it: no new process was started.
    assert after["ExecMainStartTimestampMonotonic"] == before["ExecMainStartTimestampMonotonic"]


def test_reload_applies_a_changed_config_and_keeps_the_old_one_when_invalid(
        running: Machine) -> None:
    m = running
    pid = _main_pid(m)
    generation = lab.status_json(m)["config"]["generation"]  # type: ignore[index]
    lab.write(m, lab.A_CONFIG, lab.site_a_config(rekey="6s"))
    m.sh(f"systemctl reload {UNIT}")

    def reloaded() -> bool:
        st = lab.status_json(m)
        return bool(st["config"]["generation"] == generation + 1)  # type: ignore[index]
    m.wait("config generation to increase", reloaded, timeout=60)
    journal = m.journal(UNIT)
    done = lab.events(journal, "config_reloaded")
    assert done and "wg-ab" in done[-1]["changed"], done  # type: ignore[operator]
    assert _main_pid(m) == pid, "reload must not restart the daemon"

    lab.write(m, lab.A_CONFIG, lab.site_a_config(rekey="6s").replace("policy: qkd+pqc",
                                                                    "policy: quantum-magic"))
    m.sh(f"systemctl reload {UNIT}")
    m.wait("config_reload_failed", lambda: lab.events(m.journal(UNIT), "config_reload_failed"),
           timeout=60)
    assert lab.status_json(m)["config"]["generation"] == generation + 1  # type: ignore[index]
    assert m.show(UNIT, "ActiveState")["ActiveState"] == "active" and _main_pid(m) == pid
    lab.write(m, lab.A_CONFIG, lab.site_a_config())
    m.sh(f"systemctl reload {UNIT}")
    m.wait("the good config back", lambda: lab.status_json(m)["config"]["generation"]  # type: ignore[index]
           == generation + 2, timeout=60)


def test_the_watchdog_restarts_a_wedged_daemon(running: Machine) -> None:
    m = running
    _wait_active(m)
    pid = _main_pid(m)
    restarts = int(m.show(UNIT, "NRestarts")["NRestarts"])
    m.sh(f"kill -STOP {pid}")

    def restarted() -> bool:
        props = m.show(UNIT, "NRestarts", "MainPID", "ActiveState")
        return (int(props["NRestarts"]) > restarts and props["MainPID"] not in ("0", str(pid))
                and props["ActiveState"] == "active")
    m.wait("a restart after the watchdog timeout", restarted, timeout=120)
    assert "Watchdog timeout" in m.sh(f"journalctl -u {UNIT} --no-pager").stdout
    assert m.sh(f"test -d /proc/{pid}", check=False).returncode != 0, "the wedged one is gone"
    _wait_keys(m)


def test_the_exposure_score_is_at_most_1_5(running: Machine) -> None:
    shipped = running.sh("systemd-analyze security --offline=true --no-pager"
                         " /lib/systemd/system/qkd-gateway.service", check=False).stdout
    assert lab.exposure(shipped) <= 1.5, shipped
    failsafe = running.sh("systemd-analyze security --offline=true --no-pager"
                          " /lib/systemd/system/qkd-gateway-failsafe.service", check=False).stdout
    assert lab.exposure(failsafe) <= 1.5, failsafe
    # The running unit with the wireguard-go drop-in, as PID 1 sees it.
    effective = running.sh(f"systemd-analyze security --no-pager {UNIT}", check=False).stdout
    assert lab.exposure(effective) <= 1.5, effective


def test_stop_with_keep_leaves_the_interface_and_its_psk(running: Machine) -> None:
    m = running
    _wait_active(m)
    psk = _wait_keys(m)
    # Stop right after a rotation so the key does not change between the read and the stop.
    m.sh(f"systemctl stop {UNIT}", timeout=60)
    left = lab.wg_psk(m, "wg-a")
    assert left is not None, "on_shutdown: keep must leave wg-a in place"
    assert m.sh("ip link show wg-a", check=False).returncode == 0
    # The PSK read just before the stop, or one rotation later (the stop raced a rekey, whose
    # other end then shows it too): never a random or empty one.
    m.wait("wg-a to hold a key both sites agreed on",
           lambda: left in (psk, lab.wg_psk(m, "wg-b")), timeout=15,
           describe=lambda: (left, psk, lab.wg_psk(m, "wg-b")))
    assert m.sh("test -e /run/qkd-gateway/control.sock", check=False).returncode != 0


def test_the_failsafe_fails_a_stopped_daemons_tunnel_closed(running: Machine) -> None:
    m = running
    left = lab.wg_psk(m, "wg-a")
    stopped_at = time.monotonic()
    changed = m.wait("the failsafe to replace the kept PSK",
                     lambda: (lab.wg_psk(m, "wg-a") or left) != left,
                     timeout=lab.REJECT_AFTER_S + 60)
    assert changed
    # By reject_after at the latest the old key is gone for good.
    remaining = lab.REJECT_AFTER_S - (time.monotonic() - stopped_at)
    if remaining > 0:
        time.sleep(remaining)
    assert lab.wg_psk(m, "wg-a") != left
    failsafe = m.journal("qkd-gateway-failsafe.service")
    assert lab.events(failsafe, "tunnel_failed_closed"), failsafe[-3000:]


def test_the_failsafe_fails_a_killed_daemons_tunnel_closed(running: Machine) -> None:
    m = running
    m.sh(f"systemctl start {UNIT}", timeout=120)
    _wait_active(m)
    psk = _wait_keys(m, timeout=180)
    # (/run inside the machine is its own tmpfs: write there from inside)
    m.sh("mkdir -p /run/systemd/system/qkd-gateway.service.d && printf '[Service]\\nRestart=no\\n'"
         " > /run/systemd/system/qkd-gateway.service.d/no-restart.conf && systemctl daemon-reload")
    assert m.show(UNIT, "Restart")["Restart"] == "no"
    try:
        killed_at = time.monotonic()
        m.sh(f"systemctl kill --kill-who=main --signal=SIGKILL {UNIT}")
        m.wait("the killed daemon to be down", lambda: m.show(UNIT, "ActiveState")["ActiveState"]
               in ("failed", "inactive"), timeout=60,
               describe=lambda: m.show(UNIT, "ActiveState", "SubState", "MainPID", "Result"))
        m.wait("the failsafe to replace the PSK",
               lambda: lab.wg_psk(m, "wg-a") not in (None, psk),
               timeout=lab.REJECT_AFTER_S + 60)
        remaining = lab.REJECT_AFTER_S - (time.monotonic() - killed_at)
        if remaining > 0:
            time.sleep(remaining)
        assert lab.wg_psk(m, "wg-a") not in (None, psk)
    finally:
        m.sh("rm -f /run/systemd/system/qkd-gateway.service.d/no-restart.conf"
             f" && systemctl daemon-reload && systemctl reset-failed {UNIT}")


def test_stop_with_teardown_removes_the_interface(running: Machine) -> None:
    m = running
    lab.write(m, lab.A_CONFIG, lab.site_a_config(on_shutdown="teardown"))
    m.sh(f"systemctl restart {UNIT}", timeout=120)
    _wait_active(m)
    _wait_keys(m, timeout=180)
    m.sh(f"systemctl stop {UNIT}", timeout=60)
    m.wait("wg-a removed", lambda: m.sh("ip link show wg-a", check=False).returncode != 0,
           timeout=30)
    m.wait("its wireguard-go gone", lambda: m.sh("test -S /run/wireguard/wg-a.sock",
                                                 check=False).returncode != 0, timeout=30)


def test_purge_removes_everything(running: Machine) -> None:
    m = running
    m.sh("systemctl stop qkd-lab-b kms-sim", check=False)
    m.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q qkd-gateway", timeout=180)
    leftovers = m.sh("ls -d /etc/qkd-gateway /usr/lib/qkd-gateway /var/lib/qkd-gateway"
                     " /var/lib/private/qkd-gateway /run/qkd-gateway /usr/bin/qkd-gateway"
                     " /lib/systemd/system/qkd-gateway* /etc/systemd/system/*/qkd-gateway*"
                     " /etc/systemd/system/qkd-gateway* 2>/dev/null", check=False).stdout
    assert leftovers == "", leftovers
    assert m.sh("dpkg -s qkd-gateway", check=False).returncode != 0
    units = m.sh("systemctl list-unit-files 'qkd-gateway*' --no-legend", check=False).stdout
    assert units.strip() == "", units
    assert m.show(UNIT, "LoadState")["LoadState"] == "not-found"
