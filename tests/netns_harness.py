"""Reusable helpers for tests that need real network namespaces (needs root).

    with NetnsLab() as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        lab.veth(a, "192.168.77.1/24", b, "192.168.77.2/24")
        a.run("ping", "-c1", "192.168.77.2")
        ifname = lab.ifname("wga")   # unique host-wide (UAPI sockets are shared by namespaces)

Everything is named with a per-lab random suffix, so concurrent runs and leftovers from a crashed
run never collide, and `close()` (also on failure, via the context manager) deletes the
namespaces, which takes their veth and WireGuard links with them (wireguard-go exits when its
link goes), then removes any UAPI socket left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

__all__ = ["Namespace", "NetnsLab", "PingRun", "netns_lab", "wg_keypair", "wg_show"]

T = TypeVar("T")
UAPI_DIR = Path("/var/run/wireguard")
_CLONE_NEWNET = 0x40000000


@dataclass
class Namespace:
    name: str

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 15) -> str:
        """Run a command inside the namespace; return stdout (raise with stderr on failure)."""
        proc = subprocess.run(
            self.cmd(*argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} in {self.name} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc.stdout

    async def arun(self, *argv: str, check: bool = True, timeout: float = 15) -> str:
        return await asyncio.to_thread(self.run, *argv, check=check, timeout=timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a fresh thread that has entered this namespace (setns), e.g. to open a
        socket inside it. The thread is thrown away afterwards, so our own namespace is safe."""
        result: list[T] = []
        errors: list[BaseException] = []

        def body() -> None:
            try:
                fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
                try:
                    # os.setns arrived in Python 3.12; setns(2) via libc on 3.11.
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {self.name}")
                finally:
                    os.close(fd)
                result.append(fn())
            except BaseException as exc:
                errors.append(exc)

        import threading

        thread = threading.Thread(target=body, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def ping(self, dst: str, count: int = 3, interval: float = 0.2, wait: float = 1) -> int:
        """Send ``count`` pings, return how many were lost."""
        out = self.run(
            "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait), dst,
            check=False, timeout=count * interval + wait + 10,
        )
        return _lost(out, count)

    def start_ping(self, dst: str, count: int, interval: float = 0.05) -> PingRun:
        """Start a background ping of ``count`` packets (20/s by default)."""
        proc = subprocess.Popen(
            self.cmd("ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", dst),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return PingRun(proc=proc, count=count, timeout=count * interval + 15)


@dataclass
class PingRun:
    proc: subprocess.Popen[str]
    count: int
    timeout: float

    def result(self) -> tuple[int, int, str]:
        """Wait for the run to finish; (transmitted, lost, raw summary)."""
        out, _ = self.proc.communicate(timeout=self.timeout)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if not m:
            raise AssertionError(f"unparseable ping output: {out!r}")
        sent, received = int(m.group(1)), int(m.group(2))
        return sent, sent - received, out.strip().splitlines()[-2] if out.strip() else out

    async def aresult(self) -> tuple[int, int, str]:
        return await asyncio.to_thread(self.result)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _lost(out: str, count: int) -> int:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return count if not m else int(m.group(1)) - int(m.group(2))


def wg_keypair() -> tuple[bytes, str]:
    """A fresh WireGuard key pair: (private key bytes, public key base64)."""
    import base64

    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    private = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    public = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return private, base64.b64encode(public).decode()


def wg_show(ns: Namespace, ifname: str, field_name: str) -> dict[str, str]:
    """``wg show <if> <field>`` as {peer public key: value} (independent of our UAPI code)."""
    out = ns.run("wg", "show", ifname, field_name)
    pairs = (line.split("\t") for line in out.splitlines() if line.strip())
    return {p[0]: p[1] for p in pairs if len(p) >= 2}


@dataclass
class NetnsLab:
    """Namespaces, veths and interface names for one test; tear down with close()."""

    prefix: str = "qg"
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[Namespace] = field(default_factory=list)
    ifnames: list[str] = field(default_factory=list)
    _veths: int = 0

    def namespace(self, label: str) -> Namespace:
        ns = Namespace(f"{self.prefix}-{label}-{self.suffix}")
        subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
        self.namespaces.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def ifname(self, label: str) -> str:
        """A WireGuard interface name unique host-wide (<= 15 characters)."""
        name = f"{label[:8]}{self.suffix}"[:15]
        self.ifnames.append(name)
        return name

    def veth(self, a: Namespace, a_addr: str, b: Namespace, b_addr: str) -> tuple[str, str]:
        """Join two namespaces with a veth pair carrying the given addresses; return the names."""
        self._veths += 1
        ea, eb = f"va{self._veths}{self.suffix}", f"vb{self._veths}{self.suffix}"
        subprocess.run(
            ["ip", "link", "add", ea, "netns", a.name, "type", "veth", "peer", "name", eb,
             "netns", b.name],
            check=True, capture_output=True,
        )
        for ns, dev, addr in ((a, ea, a_addr), (b, eb, b_addr)):
            ns.run("ip", "addr", "add", addr, "dev", dev)
            ns.run("ip", "link", "set", dev, "up")
        return ea, eb

    def close(self) -> None:
        # Delete WireGuard links first: wireguard-go sees its TUN device go and exits at once,
        # whereas after a namespace deletion it lingers for seconds.
        for ns in self.namespaces:
            for name in self.ifnames:
                subprocess.run(["ip", "-n", ns.name, "link", "del", name],
                               capture_output=True, check=False)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
        self.namespaces.clear()
        # wireguard-go notices the deleted TUN device and exits, unlinking its socket; wait a
        # little for that, then remove whatever is left so the next run starts clean.
        deadline = time.monotonic() + 2
        for name in self.ifnames:
            sock = UAPI_DIR / f"{name}.sock"
            while sock.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def netns_lab(prefix: str = "qg") -> Iterator[NetnsLab]:
    lab = NetnsLab(prefix=prefix)
    try:
        yield lab
    finally:
        lab.close()
