"""A Debian 12 root booted by systemd-nspawn: a real systemd 252 as PID 1 for the unit tests.

The base root (minbase + systemd, dbus, with apt lists kept so the package's dependencies can be
installed from the Debian mirror) is built by mmdebstrap once a day into the git-ignored
``.cache/nspawn/`` and reused; CI starts from a fresh clone and builds it (~35 s). Each test
module extracts a private copy, installs the .deb in it (apt, host network), then boots it with
``--private-network``: nothing inside can reach beyond its own loopback.

Commands run inside through ``nsenter`` into the container's PID 1 namespaces (``--register=no``
leaves no machined registration to go through), with a clean environment.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["BASE_PACKAGES", "CACHE", "Machine", "base_root_tar"]

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "nspawn"
SUITE = "bookworm"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# What a site router has before the operator installs qkd-gateway: an init system and a bus.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
        "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
# Generous bounds for a loaded 2-core machine: a boot takes ~2 s, mmdebstrap ~35 s.
BOOT_TIMEOUT = 120.0
BUILD_TIMEOUT = 900.0


def base_root_tar() -> Path:
    """The cached root tarball, built if missing. Keyed by the day: the kept apt lists must
    match what the mirror serves, so a stale root is rebuilt rather than trusted."""
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("systemd-nspawn", "systemd-container")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} missing: apt-get install --no-install-recommends {package}"
                               " (make setup installs it)")
    args = ["--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            "--aptopt=APT::Install-Recommends \"false\"", "--skip=cleanup/apt/lists", SUITE]
    key = hashlib.sha256("\n".join([*args, *MIRRORS]).encode()).hexdigest()[:12]
    day = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    tar = CACHE / f"{SUITE}-{key}-{day}.tar"
    if tar.exists():
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob(f"{SUITE}-*.tar"):
        old.unlink()
    partial = tar.with_suffix(".partial")
    result = subprocess.run(["mmdebstrap", "--quiet", "--format=tar", *args, str(partial), *MIRRORS],
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed ({result.returncode}): {result.stderr[-3000:]}")
    partial.rename(tar)
    return tar


class Machine:
    """A private copy of the base root; ``prepare`` runs commands before boot (host network),
    ``boot`` starts systemd as PID 1, ``sh`` runs a shell script inside the booted machine."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log = directory.with_suffix(".console.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        # Packages an install step added (set by the tests that install).
        self.pulled: list[str] = []

    @classmethod
    def extract(cls, name: str) -> Machine:
        run_dir = CACHE / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        directory = run_dir / name
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir()
        # GNU tar keeps owners, modes, device nodes and capabilities (xattrs) of the root.
        subprocess.run(["tar", "-C", str(directory), "--xattrs", "--xattrs-include=*",
                        "-xf", str(base_root_tar())], check=True, timeout=300)
        return cls(directory)

    def copy_in(self, source: Path, inside: str) -> None:
        target = self.directory / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)

    def prepare(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in the root before boot, with the host's network (apt downloads)."""
        archives = CACHE / "apt-archives"
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            ["systemd-nspawn", "-q", "-D", str(self.directory), "--register=no", "--keep-unit",
             f"--bind={archives}:/var/cache/apt/archives", "--setenv=DEBIAN_FRONTEND=noninteractive",
             "/bin/sh", "-ec", script],
            capture_output=True, text=True, timeout=timeout, check=False, env=_host_env())

    def boot(self) -> None:
        log = self.log.open("wb")
        self._proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-b", "-D", str(self.directory), "--private-network",
             "--register=no", "--keep-unit", "systemd.unit=multi-user.target"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_host_env())
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self._proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                self.leader = int(pids[0])
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    # wireguard-go needs the TUN device (the host kernel has no WireGuard), mode
                    # 0666 as udev makes it on a Debian host (50-udev-default.rules). nspawn
                    # binds the host's node, 0600 on this udev-less machine: replace the bind
                    # with the container's own node rather than chmod the host's.
                    self.sh("umount /dev/net/tun 2>/dev/null; rm -f /dev/net/tun; mkdir -p"
                            " /dev/net && mknod -m 0666 /dev/net/tun c 10 200")
                    return
            time.sleep(0.5)
        raise RuntimeError(f"container did not boot within {BOOT_TIMEOUT} s: "
                           f"{self.log.read_text(errors='replace')[-3000:]}")

    def sh(self, script: str, *, check: bool = True,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with /bin/sh inside the booted machine (all of PID 1's namespaces)."""
        if not self.leader:
            raise RuntimeError("machine not booted")
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "/usr/bin/env", "-i",
             *(f"{k}={v}" for k, v in _ENV.items()), "/bin/sh", "-c", script],
            capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"inside the machine, exit {result.returncode}: {script}\n"
                                 f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
        return result

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(self, what: str, predicate: object, timeout: float = 90.0,
             interval: float = 0.5, describe: Callable[[], object] | None = None) -> object:
        """Poll ``predicate()`` until it returns a true value; fail with ``what`` (and what
        ``describe()`` says then) after ``timeout``."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        seen = f"; {describe()!r}" if describe else ""
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what} (last: {last!r}{seen})")

    def journal(self, unit: str, since_cursor: str | None = None) -> str:
        cursor = f"--after-cursor='{since_cursor}'" if since_cursor else ""
        return self.sh(f"journalctl -u {unit} -o cat --no-pager {cursor}", check=False).stdout

    def poweroff(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None and self.leader:
            self.sh("systemctl poweroff", check=False, timeout=30)
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # our own nspawn process, by its pid
                self._proc.wait(timeout=30)
        self._proc = None
        self.leader = 0

    def remove(self) -> None:
        self.poweroff()
        shutil.rmtree(self.directory, ignore_errors=True)


def _host_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = _ENV["PATH"]
    return env
