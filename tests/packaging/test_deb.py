"""The .deb itself (make deb): layout, control fields, conffiles, a relocated venv on Debian's
python3, maintainer scripts. Installing, running and purging it: tests/systemd/."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.systemd  # needs `make deb` (~1 min, wheels from PyPI): the package tier

PREFIX = "usr/lib/qkd-gateway"


def _dpkg(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, timeout=120,
                          check=True).stdout


@pytest.fixture(scope="module")
def tree(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True, timeout=120)
    return root


def test_name_version_and_control_fields(deb: Path) -> None:
    import gateway

    assert deb.name == f"qkd-gateway_{gateway.__version__}-1_amd64.deb"
    fields = dict(line.split(": ", 1) for line in _dpkg("-f", str(deb)).splitlines()
                  if ": " in line and not line.startswith(" "))
    assert fields["Package"] == "qkd-gateway" and fields["Architecture"] == "amd64"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    # The venv's compiled wheels are for CPython 3.11: pin the interpreter's minor version.
    # procps: /bin/kill for ExecReload (systemctl reload).
    assert depends == ["python3 (>= 3.11)", "python3 (<< 3.12)", "iproute2", "wireguard-tools",
                       "procps"]
    assert fields["Recommends"] == "wireguard-go"
    assert "--no-install-recommends" in _dpkg("-f", str(deb), "Description")


def test_files_are_where_debian_expects_them(tree: Path) -> None:
    assert (tree / "usr/bin/qkd-gateway").is_symlink()
    assert str((tree / "usr/bin/qkd-gateway").readlink()) == "../lib/qkd-gateway/bin/qkd-gateway"
    for unit in ("qkd-gateway.service", "qkd-gateway-failsafe.service",
                 "qkd-gateway-failsafe.timer"):
        assert (tree / "lib/systemd/system" / unit).is_file(), unit
    for dropin in ("wireguard-go.conf", "wireguard-go-failsafe.conf"):
        assert (tree / "usr/share/qkd-gateway/systemd" / dropin).is_file(), dropin
    docs = tree / "usr/share/doc/qkd-gateway"
    for name in ("copyright", "changelog.Debian.gz", "README.md", "deploy.md", "config.md",
                 "operations.md", "examples/pair/bucharest.yaml"):
        assert (docs / name).is_file(), name
    assert (tree / "DEBIAN/conffiles").read_text().split() == ["/etc/qkd-gateway/gateway.yaml"]
    assert (tree / "etc/qkd-gateway/credentials").stat().st_mode & 0o777 == 0o700


def test_the_venv_is_relocated_onto_debians_python(tree: Path) -> None:
    venv = tree / PREFIX
    assert str((venv / "bin/python3").readlink()) == "/usr/bin/python3"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg and "include-system-site-packages = false" in cfg
    assert "version = 3.11." in cfg
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            assert script.read_text().startswith(f"#!/{PREFIX}/bin/python\n"), script.name
    assert not list(venv.glob("bin/activate*")) and not list(venv.glob("bin/pip*"))
    assert not list(venv.rglob("*.pyc")), "bytecode is compiled by postinst, not shipped"
    site = next(venv.glob("lib/python3.11/site-packages"))
    assert (site / "gateway" / "cli" / "main.py").is_file()
    for dist in ("cryptography", "pydantic", "aiohttp", "pyroute2", "structlog", "aiomqtt"):
        assert list(site.glob(f"{dist}-*.dist-info")), dist
    # Only runtime dependencies: no test or lint tools.
    for dist in ("pytest", "mypy", "ruff", "hypothesis", "pip", "setuptools"):
        assert not list(site.glob(f"{dist}-*.dist-info")), dist


def test_nothing_names_the_build_tree(deb: Path) -> None:
    # The package was staged under build/deb/stage/root: no file may still point there.
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    assert b"/stage/root/" not in data.read(), member.name
                elif member.issym():
                    assert "stage" not in member.linkname, member.name


def test_maintainer_scripts_are_valid_posix_shell(tree: Path) -> None:
    for script in ("postinst", "prerm", "postrm"):
        path = tree / "DEBIAN" / script
        assert path.stat().st_mode & 0o111, script
        subprocess.run(["sh", "-n", str(path)], check=True, timeout=30)
    postinst = "\n".join(line for line in (tree / "DEBIAN/postinst").read_text().splitlines()
                         if not line.lstrip().startswith("#"))
    # Enabling is the operator's choice: the package never enables or starts the daemon.
    assert "systemctl enable" not in postinst and "systemctl start" not in postinst
