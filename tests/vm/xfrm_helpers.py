"""Helpers for the XFRM scenarios of the kernel lab: two sites, the daemon's rollover sequence,
a wire capture, `ip xfrm state` parsing and an event collector."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from gateway.dataplane.xfrm import AEAD_ALGORITHM, EspTunnel, XfrmEvent, XfrmMonitor
from gateway.keymaterial import Secret
from tests.netns_harness import Namespace, PingRun


@dataclass
class Site:
    ns: Namespace
    tunnel: EspTunnel


@dataclass
class Keys:
    """Everything the sites were given, to scan logs and output for leaks afterwards."""

    used: list[Secret] = field(default_factory=list)

    def new(self) -> Secret:
        key = Secret.random(36)
        self.used.append(key)
        return key

    def assert_absent(self, text: str) -> None:
        for key in self.used:
            assert key.reveal().hex() not in text, "ESP key bytes leaked into logs/output"


# The daemon's retire grace, shortened for the lab: packets the peer sent on the old SA just
# before it switched may still be queued when the old inbound SA is deleted.
RETIRE_GRACE = 0.2


async def rollover(a: Site, b: Site, keys: Keys, old: tuple[int, int] | None
                   ) -> tuple[int, int]:
    """One make-before-break rekey in the protocol's order: each side allocates and installs its
    new inbound SA, then (after the peer confirmed) switches its outbound SA; after a grace
    period the old inbound SAs go. Returns (A's inbound SPI, B's inbound SPI)."""
    key_ab, key_ba = keys.new(), keys.new()
    spi_a, spi_b = await a.tunnel.allocate_spi(), await b.tunnel.allocate_spi()
    await a.tunnel.install_inbound(spi_a, key_ba)
    await b.tunnel.install_inbound(spi_b, key_ab)
    await a.tunnel.activate_outbound(spi_b, key_ab)
    await b.tunnel.activate_outbound(spi_a, key_ba)
    if old is not None:
        await asyncio.sleep(RETIRE_GRACE)
        assert await a.tunnel.retire_inbound(old[0])
        assert await b.tunnel.retire_inbound(old[1])
    return spi_a, spi_b


_SA = re.compile(r"^src (\S+) dst (\S+)\n\tproto esp spi 0x([0-9a-f]+)\(\d+\) reqid (\d+)"
                 r".*\n(?:\t.*\n)*?\taead (\S+) 0x([0-9a-f]+) \((\d+) bits\) (\d+)", re.M)


def xfrm_states(ns: Namespace) -> dict[int, dict[str, str]]:
    """`ip -s xfrm state` (the iproute2 view, independent of our decoder) by SPI."""
    out = {}
    for m in _SA.finditer(ns.run("ip", "-s", "xfrm", "state")):
        src, dst, spi, reqid, alg, key, bits, icv = m.groups()
        out[int(spi, 16)] = {"src": src, "dst": dst, "reqid": reqid, "alg": alg, "key": key,
                             "bits": bits, "icv": icv}
    return out


def start_ping(ns: Namespace, src: str, dst: str, count: int, interval: float = 0.02) -> PingRun:
    """A background ping from a chosen source address (the tunnel's inner addresses)."""
    proc = subprocess.Popen(
        ns.cmd("ping", "-n", "-q", "-I", src, "-c", str(count), "-i", str(interval), "-W", "2",
               dst), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return PingRun(proc=proc, count=count, timeout=count * interval + 15)


def ping(ns: Namespace, src: str, dst: str, count: int = 3) -> int:
    """Ping ``count`` times from ``src``; the number lost."""
    out = ns.run("ping", "-n", "-q", "-I", src, "-c", str(count), "-i", "0.2", "-W", "1", dst,
                 check=False, timeout=count + 15)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)) - int(m.group(2))


class Capture:
    """tcpdump of what one namespace sends on one interface (-Q out), confirmed listening, lines
    collected as they come. Not --immediate-mode: that retires a buffer block per packet, and a
    starved tcpdump (QEMU on a loaded host) then drops packets; lines lag up to a second instead,
    so tests wait for the packet they sent last (Wire.wait) rather than for time.

    Outbound only, because a receiving interface also shows the packets ESP decapsulated on
    it (the kernel re-injects them there), which never were on the wire; capture both ends'
    outbound traffic (Wire) to see the whole wire."""

    def __init__(self, ns: Namespace, ifname: str) -> None:
        self.proc = subprocess.Popen(
            ns.cmd("tcpdump", "-n", "-l", "-p", "-B", "8192", "-Q", "out", "-i", ifname),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        fd = self.proc.stderr.fileno()  # raw reads: a buffered readline would hide lines
        deadline = time.monotonic() + 30
        seen = b""
        while b"listening on" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.proc.kill()
                raise AssertionError(f"tcpdump did not start: {seen!r}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"tcpdump exited: {seen!r}")
            seen += chunk
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        """Stop tcpdump; the number of packets the kernel dropped before tcpdump saw them (a
        capture is evidence of absence only if that is 0)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.proc.stderr is not None
        summary = self.proc.stderr.read()
        m = re.search(r"(\d+) packets? dropped by kernel", summary)
        assert m, f"no tcpdump summary: {summary!r}"
        return int(m.group(1))


class Wire:
    """Everything on a veth pair (what each end sends), for the whole test. A phase takes a
    ``mark()`` before sending and ``wait()``s for the lines after it."""

    def __init__(self, a: Namespace, veth_a: str, b: Namespace, veth_b: str) -> None:
        self.captures = [Capture(a, veth_a)]
        try:
            self.captures.append(Capture(b, veth_b))
        except BaseException:
            self.stop()
            raise

    def mark(self) -> tuple[int, ...]:
        return tuple(len(cap.lines) for cap in self.captures)

    def since(self, mark: tuple[int, ...]) -> list[str]:
        return [line for cap, m in zip(self.captures, mark, strict=True) for line in cap.lines[m:]]

    def wait(self, mark: tuple[int, ...], until: Callable[[list[str]], bool],
             timeout: float = 60) -> list[str]:
        """The lines since ``mark`` once they satisfy ``until`` (the capture caught up with the
        traffic sent last), or whatever there is after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not until(self.since(mark)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.since(mark)

    def stop(self) -> int:
        """Stop both captures; packets dropped before capture (must be 0 for the evidence)."""
        return sum(cap.stop() for cap in self.captures)


def count(lines: list[str], *needles: str) -> int:
    return sum(all(n in line for n in needles) for line in lines)


class Events:
    """Collects a monitor's events in the background."""

    def __init__(self, monitor: XfrmMonitor) -> None:
        self.seen: list[XfrmEvent] = []
        self._task = asyncio.create_task(self._run(monitor))

    async def _run(self, monitor: XfrmMonitor) -> None:
        async for event in monitor:
            self.seen.append(event)

    async def wait_for(self, pred: Callable[[XfrmEvent], bool], timeout: float,
                       since: int = 0) -> XfrmEvent:
        """The first event (from index ``since`` on) matching ``pred``; waits up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.seen[since:]:
                if pred(event):
                    return event
            await asyncio.sleep(0.1)
        raise AssertionError(f"no matching XFRM event within {timeout} s; seen {self.seen}")

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


FOREIGN_KEY = "0x" + "5a" * 36  # the strongSwan-like neighbour's (public, fixed) key


def add_neighbour(ns: Namespace, me: str, peer: str, *, inbound_spi: str, outbound_spi: str,
                  timeout: float = 60) -> str:
    """SAs and a policy as strongSwan installs them (reqid 1, its own subnets), next to ours.
    Returns :func:`neighbour`'s view of them, to compare after rollovers and shutdown."""
    for spi, src, dst in ((outbound_spi, me, peer), (inbound_spi, peer, me)):
        ns.run("ip", "xfrm", "state", "add", "src", src, "dst", dst, "proto", "esp", "spi", spi,
               "reqid", "1", "mode", "tunnel", "aead", AEAD_ALGORITHM, FOREIGN_KEY, "128",
               timeout=timeout)
    ns.run("ip", "xfrm", "policy", "add", "src", "10.91.0.0/24", "dst", "10.92.0.0/24", "dir",
           "out", "priority", "375423", "tmpl", "src", me, "dst", peer, "proto", "esp", "reqid",
           "1", "mode", "tunnel")
    return neighbour(ns)


def neighbour(ns: Namespace) -> str:
    return ns.run("ip", "xfrm", "state", "list", "reqid", "1") + ns.run(
        "ip", "xfrm", "policy", "list", "src", "10.91.0.0/24")
