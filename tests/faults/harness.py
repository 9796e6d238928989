"""The fault lab: tests/e2e/lab.py's two real sites, plus the handles a fault test needs.

:class:`FaultLab` extends :class:`tests.e2e.lab.Lab` (the lead's harness, unchanged) with

* a KME network process that takes orders (tests/faults/kmsctl.py): latency, 503s, drops, a
  pause, a KME stopped/started, a new key store, forgotten key IDs, reissued certificates;
* network faults between the site namespaces (nftables drops, random loss, a link down);
* daemons started with extra environment (libfaketime for wall-clock jumps);
* the checks every scenario ends with (:meth:`FaultLab.check_keys`, :meth:`FaultLab.converge`):
  no epoch or QKD key ID ever used twice, both ends on equal PSKs as `wg show` reports them,
  rotations resumed, and no PSK that `wg show` ever reported found in any process's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.demo import LabProcess
from tests.e2e.lab import Lab

__all__ = ["NAMES", "FaultLab", "ping_window"]

NAMES = ("bucharest", "cluj-napoca")
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


class FaultLab(Lab):
    """``async with FaultLab(rekey_interval=2, reject_after=6) as lab``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control = self.root / "kmsctl.sock"
        self.daemon_env: dict[str, dict[str, str]] = {}
        self.seen_psks: set[str] = set()  # every PSK `wg show` reported (base64)

    # -- the KME network -------------------------------------------------------------------------
    async def start_kms(self) -> None:
        argv = [sys.executable, "-m", "tests.faults.kmsctl", "--control", str(self.control),
                *self.plan.kms_sim_args()]
        env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.kms = await self.procs.start("kms-sim", f"{self.prefix}-kms", argv,
                                          self.plan.kms_log_path, env)
        await self.wait_kms_ready()

    async def wait_kms_ready(self) -> None:
        await super().wait_kms_ready()
        deadline = time.monotonic() + 10
        while not self.control.exists():
            assert time.monotonic() < deadline, "kmsctl control socket never appeared"
            await asyncio.sleep(0.05)

    async def kms_op(self, op: str, **fields: Any) -> dict[str, Any]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.control)), 10)
        try:
            writer.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            await writer.drain()
            answer: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 30))
        finally:
            writer.close()
        assert answer.get("ok"), answer
        return answer

    def kme(self, name: str) -> str:
        return self.plan.by_name[name].kme_id

    async def kms_faults(self, name: str | None = None, **faults: Any) -> None:
        """Set faults on one site's KME (both KMEs when ``name`` is None)."""
        for n in [name] if name else list(NAMES):
            await self.kms_op("faults", kme=self.kme(n), **faults)

    async def kms_clear(self) -> None:
        await self.kms_faults(latency=0, error_503_rate=0, drop_rate=0, paused=False)

    # -- daemons ---------------------------------------------------------------------------------
    async def start_daemon(self, name: str) -> LabProcess:
        from gateway.demo import gateway_argv
        site = self.plan.by_name[name]
        argv = gateway_argv("run", "--config", str(site.config_path))
        proc = await self.procs.start(f"daemon {name}", site.netns, argv, site.log_path,
                                      self.daemon_env.get(name))
        self.daemons[name] = proc
        return proc

    def stop_signal(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.daemons[name].pid, sig)

    async def restart_daemon(self, name: str) -> None:
        """SIGKILL (if running) and start again."""
        proc = self.daemons[name]
        if proc.running():
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait(10)
        await self.start_daemon(name)

    # -- network faults ----------------------------------------------------------------------------
    def netns(self, name: str) -> str:
        return self.plan.by_name[name].netns

    def sh(self, name: str, *argv: str, check: bool = True) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.netns(name), *argv],
                              capture_output=True, text=True, timeout=20, check=False)
        if check and done.returncode:
            raise AssertionError(f"{' '.join(argv)} in {name}: {done.stderr.strip()}")
        return done.stdout

    def partition(self, name: str, on: bool, *, direction: str = "both",
                  loss_percent: int = 100) -> None:
        """Drop packets between site ``name`` and the other site (the KMS stays reachable):
        all of them, or a random ``loss_percent`` (nftables numgen; this kernel has no netem).
        ``direction``: "in", "out" or "both" (as seen from ``name``)."""
        peer = str(self.other(self.plan.by_name[name]).wan.ip)
        self.sh(name, "nft", "delete", "table", "inet", "qkdfault", check=False)
        if not on:
            return
        verdict = "drop" if loss_percent >= 100 else f"numgen random mod 100 < {loss_percent} drop"
        rules = ["table inet qkdfault {",
                 " chain in { type filter hook input priority 0; policy accept; }",
                 " chain out { type filter hook output priority 0; policy accept; }", "}"]
        if direction in ("in", "both"):
            rules.append(f"add rule inet qkdfault in ip saddr {peer} {verdict}")
        if direction in ("out", "both"):
            rules.append(f"add rule inet qkdfault out ip daddr {peer} {verdict}")
        script = self.root / f"nft-{name}.nft"
        script.write_text("\n".join(rules) + "\n")
        self.sh(name, "nft", "-f", str(script))

    def wan_link(self, name: str, up: bool) -> None:
        self.topo.set_wan_link(name, up)

    # -- observation and the standing checks ---------------------------------------------------------
    def rekeyed(self, name: str) -> list[dict[str, Any]]:
        return self.events(name, "tunnel_rekeyed")

    def check_keys(self) -> None:
        """No key reused: at each end every epoch and every QKD key ID appears in one activation
        only; the epochs both ends activated carry the same key IDs."""
        per: dict[str, dict[int, tuple[str, ...]]] = {}
        for n in NAMES:
            events = self.rekeyed(n)
            epochs = [e["epoch"] for e in events]
            assert len(set(epochs)) == len(epochs), f"{n} activated an epoch twice: {epochs}"
            ids = [k for e in events for k in e["key_ids"]]
            assert len(set(ids)) == len(ids), f"{n} used a QKD key ID twice"
            per[n] = {e["epoch"]: tuple(e["key_ids"]) for e in events}
        a, b = per[NAMES[0]], per[NAMES[1]]
        for epoch in set(a) & set(b):
            assert a[epoch] == b[epoch], f"epoch {epoch}: the two ends used different key IDs"
        self.check_no_key_in_logs()

    def check_no_key_in_logs(self) -> None:
        """No PSK seen in `wg show` appears in any daemon's or the KMS's output (base64 or
        hex)."""
        import base64
        texts = [s.log_path.read_text(errors="replace") for s in self.plan.sites]
        texts.append(self.plan.kms_log_path.read_text(errors="replace"))
        for psk in self.seen_psks:
            forms = (psk, base64.b64decode(psk).hex())
            assert not any(f in t for f in forms for t in texts), "a PSK reached a log"

    def psks_equal(self) -> bool:
        try:
            a, b = self.psk(NAMES[0]), self.psk(NAMES[1])
        except (subprocess.CalledProcessError, AssertionError):
            return False
        self.seen_psks.update(p for p in (a, b) if p != "(none)")
        return a == b != "(none)"

    def common_epochs(self) -> set[int]:
        return set(self.epochs(NAMES[0])) & set(self.epochs(NAMES[1]))

    async def converge(self, rotations: int = 2, timeout: float = 60, what: str = "") -> None:
        """The state converges after a fault: ``rotations`` new epochs activated at both ends,
        then both ends on the same PSK (`wg show`), and no key reused."""
        start = max(self.common_epochs(), default=0)
        await self.wait_for(
            lambda: len([e for e in self.common_epochs() if e > start]) >= rotations, timeout,
            f"{rotations} rotations at both ends after {what or 'the fault'}")
        await self.wait_for(self.psks_equal, 20, f"equal PSKs after {what or 'the fault'}")
        self.check_keys()

    def closed_count(self, name: str) -> int:
        return len(self.events(name, "tunnel_failed_closed"))

    async def wait_closed(self, name: str, before: int, timeout: float, what: str) -> None:
        await self.wait_for(lambda: self.closed_count(name) > before, timeout, what)


@contextlib.asynccontextmanager
async def ping_window(lab: Lab) -> Any:
    """A 20/s pinger through the tunnel for the body of the ``async with``; yields its stats."""
    pinger = lab.pinger()
    task = asyncio.create_task(pinger.run())
    try:
        yield pinger.stats
    finally:
        pinger.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def flowing(lab: Lab, stats: Any, n: int = 10, timeout: float = 30) -> None:
    """Wait for ``n`` more replies: traffic passes."""
    base = stats.received
    await lab.wait_for(lambda: stats.received >= base + n, timeout, "traffic through the tunnel")


async def blocked(stats: Any, seconds: float = 2.0) -> bool:
    """True when no reply at all arrives for ``seconds`` (after 1 s for late replies)."""
    await asyncio.sleep(1.0)
    base = stats.received
    await asyncio.sleep(seconds)
    return stats.received == base


def edit_config(lab: Lab, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change site ``name``'s generated configuration before its daemon starts."""
    import yaml
    path = lab.plan.by_name[name].config_path
    cfg = yaml.safe_load(path.read_text())
    change(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def wireguard_go_pids(lab: Lab, name: str) -> list[int]:
    """wireguard-go processes of site ``name`` (its tunnel interface's user-space driver)."""
    from gateway.demo.netns import netns_pids
    out = []
    for pid in netns_pids(lab.plan.by_name[name].netns):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("wireguard-go"):
                out.append(pid)
    return out
