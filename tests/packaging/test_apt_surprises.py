"""Install without surprises: every apt call installs only what it names.

`wireguard-tools` Recommends `wireguard-modules`, which apt satisfies with a realtime kernel image
plus udev, apparmor and initramfs-tools: on a site router that changes the next boot. The
simulations below run against an EMPTY dpkg status (``Dir::State::Status``), so they mean the same
on a fresh machine and on one where everything is already installed, and they read the real
Debian package lists (`make setup` makes sure they exist).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = re.compile(r"^(linux-image-.*|linux-headers-.*|udev|initramfs-tools.*|dracut.*|"
                       r"apparmor|grub.*|firmware-.*|wireguard-dkms|dkms)$")
# Files that run apt: the Makefile, CI, our scripts and the package build.
APT_FILES = ["Makefile", ".ci/run", *sorted(p.relative_to(REPO).as_posix()
                                            for p in (REPO / "scripts").glob("*.sh")),
             *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "packaging").glob("*.sh"))]
APT_INSTALL = re.compile(r"\bapt(-get)?\s+(?:-\S+\s+)*install\b")


def _deb_depends() -> list[str]:
    """The package's Depends, from packaging/debian/control.in, version constraints dropped."""
    text = (REPO / "packaging" / "debian" / "control.in").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("Depends:")]
    return sorted({part.split("(")[0].strip() for part in line[len("Depends:"):].split(",")})


def _setup_packages() -> list[str]:
    out = subprocess.run(["make", "-s", "--no-print-directory", "print-debs"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    packages = out.split()
    assert "wireguard-tools" in packages, packages
    return packages


def _simulate(tmp_path: Path, packages: list[str], *, recommends: bool) -> list[str]:
    if shutil.which("apt-get") is None:
        pytest.fail("apt-get missing: this project targets Debian 12")
    status = tmp_path / "empty-status"
    status.write_text("")
    cmd = ["apt-get", "-s", "-q", "-o", f"Dir::State::Status={status}",
           "-o", "Debug::NoLocking=1", "install", *packages]
    if not recommends:
        cmd.insert(-len(packages), "--no-install-recommends")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (
        f"apt simulation failed (no package lists? run `make setup`): {result.stderr[-2000:]}")
    pulled = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("Inst ")]
    assert set(packages) <= set(pulled), "every named package must be in the simulation"
    return pulled


@pytest.mark.parametrize("path", APT_FILES)
def test_every_apt_install_names_no_install_recommends(path: str) -> None:
    text = (REPO / path).read_text()
    # Join continued lines so a command split over several lines is read whole.
    for command in re.sub(r"\\\n\s*", " ", text).splitlines():
        if APT_INSTALL.search(command) and not command.lstrip().startswith("#"):
            assert "--no-install-recommends" in command, f"{path}: {command.strip()}"


def test_make_setup_pulls_no_kernel_udev_apparmor_or_initramfs(tmp_path: Path) -> None:
    pulled = _simulate(tmp_path, _setup_packages(), recommends=False)
    assert not [p for p in pulled if FORBIDDEN.match(p)], pulled


def test_the_packages_dependencies_pull_no_kernel_either(tmp_path: Path) -> None:
    # What `apt-get install --no-install-recommends ./qkd-gateway_*.deb wireguard-go` resolves.
    pulled = _simulate(tmp_path, [*_deb_depends(), "wireguard-go"], recommends=False)
    assert not [p for p in pulled if FORBIDDEN.match(p)], pulled
    assert "python3" in pulled and "wireguard-tools" in pulled


def test_the_check_sees_the_kernel_that_recommends_would_pull(tmp_path: Path) -> None:
    """The control: without --no-install-recommends the same list does pull a kernel image,
    so the two tests above would fail if a file dropped the flag."""
    pulled = _simulate(tmp_path, _setup_packages(), recommends=True)
    assert [p for p in pulled if p.startswith("linux-image-")], pulled
