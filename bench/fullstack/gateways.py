"""Two real ``qkd-gateway run`` daemons on loopback with N tunnels between them, each daemon's
KMS client talking mutual TLS to its own KME of one ``qkd-gateway kms-sim`` process.

The tunnels use the key-recording data plane (``backend: record``, enabled for these processes
only by QKD_GATEWAY_BENCH_DATAPLANE=record): the protocol, the KMS requests, the keeper, the
state file and the telemetry are the real ones; the PSK write lands in memory. Both sites are
hubs: all N tunnels of a site share one (recorded) WireGuard interface, one WireGuard peer each,
as a site router with many peers runs one ``wg0``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from bench.fullstack.logs import JsonLog
from gateway.cli.keygen import write_wireguard_key
from gateway.daemon.control import ControlError, request
from gateway.identity import SiteIdentity
from gateway.kms.sim.pki import ensure_pki

__all__ = ["GatewayPair", "Site"]

SITES = ("alpha", "beta")
KMS_NAME = "qkd"
#: Link capacity of the simulated QKD link, in 256-bit keys: never the bottleneck here (the
#: simulated pool draws its bits lazily, so a big capacity costs nothing).
LINK_KEYS = 50_000_000
#: Waiting for processes to come up; generous for a loaded 2-core machine.
READY_TIMEOUT = 60.0
#: A status answer lists every tunnel: seconds at 10,000 tunnels on a loaded machine.
STATUS_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wg_public() -> str:
    key = x25519.X25519PrivateKey.generate().public_key()
    return base64.b64encode(key.public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)).decode()


@dataclass
class Site:
    name: str
    directory: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: JsonLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = JsonLog(self.directory / "daemon.log")

    @property
    def sae_id(self) -> str:
        return f"sae-{self.name}"

    @property
    def kme_id(self) -> str:
        return f"kme-{self.name}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def _start(argv: list[str], log: Path,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        # cwd: the log's directory, never a checkout: `python -m` puts the working directory
        # first on sys.path, which would shadow PYTHONPATH (GatewayPair.source).
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=log.parent, env={**os.environ, **(env or {})})
    finally:
        os.close(fd)


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class GatewayPair:
    """``with GatewayPair(n, rekey_interval=1.0) as pair``: KME network and both daemons, all
    tunnels keyed once (``pair.wait_keyed``) before the caller measures."""

    def __init__(self, tunnels: int, rekey_interval: float, reject_after: float,
                 pool: dict[str, int] | None = None, state_root: Path | None = None,
                 source: Path | None = None) -> None:
        self.n = tunnels
        self.rekey_interval = rekey_interval
        self.reject_after = reject_after
        self.pool = pool or {"target": 256, "batch": 64, "low_water": 64}
        self.root = Path(tempfile.mkdtemp(prefix="qkd-bench-fullstack-"))
        self.pki = self.root / "pki"
        self.sites = [Site(n, self.root / n, free_port()) for n in SITES]
        self.kms: subprocess.Popen[bytes] | None = None
        self.kms_log = JsonLog(self.root / "kms-sim.log")
        self.kme_urls: dict[str, str] = {}
        # Where the daemons keep their state files (default: the run directory, on the disk
        # the machine has; a tmpfs here shows what the fsyncs of the state file cost).
        self.state_root = state_root
        self._extra_dirs: list[Path] = []
        # Another checkout of the gateway to run the daemons from (before/after comparisons).
        self.source = source

    # -- set-up -------------------------------------------------------------------------------
    def __enter__(self) -> GatewayPair:
        try:
            self._materialize()
            self._start_kms()
            self._write_configs()
            env = {"QKD_GATEWAY_BENCH_DATAPLANE": "record"}
            if self.source is not None:
                env["PYTHONPATH"] = str(self.source)
            for s in self.sites:
                s.proc = _start([sys.executable, "-m", "gateway", "run", "--config",
                                 str(s.directory / "config.yaml")], s.directory / "daemon.log", env)
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_kms_only(self) -> None:
        """The KME network alone (for the floor's bare mutual-TLS GETs)."""
        self._materialize()
        self._start_kms()

    def __exit__(self, *exc: object) -> None:
        for s in self.sites:
            _stop(s.proc)
        _stop(self.kms)
        shutil.rmtree(self.root, ignore_errors=True)
        for d in self._extra_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def _materialize(self) -> None:
        self.root.chmod(0o700)
        ensure_pki(self.pki, kmes={s.kme_id: ["127.0.0.1"] for s in self.sites},
                   saes=[s.sae_id for s in self.sites])
        for s in self.sites:
            s.directory.mkdir(mode=0o700)
            (s.directory / "state").mkdir(mode=0o700)
            SiteIdentity.generate().save(s.directory)
            write_wireguard_key(s.directory)

    def _start_kms(self) -> None:
        argv = [sys.executable, "-m", "gateway", "kms-sim", "--pki-dir", str(self.pki),
                "--log-format", "json", "--max-key-count", str(LINK_KEYS),
                "--link", f"{self.sites[0].kme_id}:{self.sites[1].kme_id}"]
        for s in self.sites:
            argv += ["--kme", f"{s.kme_id}=127.0.0.1:0", "--sae", f"{s.sae_id}@{s.kme_id}"]
        self.kms = _start(argv, self.root / "kms-sim.log")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for rec in self.kms_log.read(frozenset({"kms_sim_ready"})):
                self.kme_urls = dict(rec["kmes"])
                return
            if self.kms.poll() is not None:
                break
            time.sleep(0.1)
        tail = (self.root / "kms-sim.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"kms-sim did not become ready:\n{tail}")

    def _config(self, me: Site, other: Site, peer_keys: list[str]) -> dict[str, Any]:
        rel = os.path.relpath
        here = me.directory
        octet = 64 if me is self.sites[0] else 128
        tunnels = []
        for i in range(self.n):
            tunnels.append({
                "name": f"t{i}", "kind": "wireguard", "interface": "bench0", "peer": other.name,
                "policy": "qkd+pqc", "kms": [KMS_NAME],
                "rekey_interval": f"{self.rekey_interval:g}s",
                "reject_after": f"{self.reject_after:g}s", "on_shutdown": "keep",
                "wireguard": {
                    "backend": "record", "private_key": {"file": "wireguard.key"},
                    "listen_port": 51820, "peer_public_key": peer_keys[i],
                    "allowed_ips": [f"10.{octet + i // 65536}.{i // 256 % 256}.{i % 256}/32"],
                },
            })
        return {
            "site": {"name": me.name, "sae_id": me.sae_id,
                     "identity": {"ed25519_key": {"file": "ed25519.key"},
                                  "mldsa65_key": {"file": "mldsa65.key"}}},
            "state_dir": str(self._state_dir(me)),
            "control_socket": "control.sock",
            "listen": {"address": "127.0.0.1", "port": me.port},
            "kms": [{
                "name": KMS_NAME, "kind": "etsi014", "url": self.kme_urls[me.kme_id],
                "kme_id": me.kme_id, "ca_file": rel(self.pki / "ca.crt", here),
                "client_cert": rel(self.pki / f"{me.sae_id}.crt", here),
                "client_key": {"file": rel(self.pki / f"{me.sae_id}.key", here)},
                "pool": self.pool,
            }],
            "peers": [{
                "name": other.name, "sae_id": other.sae_id, "address": f"127.0.0.1:{other.port}",
                "public_keys": {"ed25519": {"file": rel(other.directory / "ed25519.pub", here)},
                                "mldsa65": {"file": rel(other.directory / "mldsa65.pub", here)}},
            }],
            "tunnels": tunnels,
            "telemetry": {"log": {"format": "json", "level": "info"}},
        }

    def _state_dir(self, site: Site) -> Path:
        if self.state_root is None:
            return site.directory / "state"
        path = Path(tempfile.mkdtemp(prefix=f"{site.name}-", dir=self.state_root))
        self._extra_dirs.append(path)
        return path

    def _write_configs(self) -> None:
        a, b = self.sites
        # The recorded data plane never checks that the WireGuard peers pair up: each tunnel
        # only needs its own peer key on the shared interface.
        keys = {s.name: [_wg_public() for _ in range(self.n)] for s in self.sites}
        for me, other in ((a, b), (b, a)):
            config = self._config(me, other, keys[other.name])
            # JSON is YAML: json.dumps writes 10,000 tunnels in a second, yaml.safe_dump took
            # minutes on the loaded machine. Small files stay block-style YAML, for reading.
            text = json.dumps(config, indent=1) + "\n" if self.n > 100 else \
                yaml.safe_dump(config, sort_keys=False)
            (me.directory / "config.yaml").write_text(text)

    # -- observation --------------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        assert self.kms is not None
        return {**{s.name: s.pid for s in self.sites}, "kms": self.kms.pid}

    def check_alive(self) -> None:
        for s in self.sites:
            if s.proc is None or s.proc.poll() is not None:
                tail = (s.directory / "daemon.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"daemon {s.name} exited:\n{tail}")
        if self.kms is None or self.kms.poll() is not None:
            raise RuntimeError("kms-sim exited")

    def wait_keyed(self, timeout: float) -> float:
        """Wait until every tunnel has rekeyed at least once on both sites; the seconds it took."""
        start = time.monotonic()
        seen: dict[str, set[str]] = {s.name: set() for s in self.sites}
        while True:
            self.check_alive()
            for s in self.sites:
                for rec in s.log.read(frozenset({"tunnel_rekeyed"})):
                    seen[s.name].add(rec["tunnel"])
            if all(len(v) >= self.n for v in seen.values()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"tunnels keyed after {timeout:g} s: "
                                   f"{ {k: len(v) for k, v in seen.items()} } of {self.n}")
            time.sleep(0.25)

    def pool_stats(self) -> dict[str, dict[str, float]] | None:
        """Both daemons' key pools from ``qkd-gateway status`` (control socket): per site, the
        sums of ``handed_out``, ``fetched`` and ``size``, and ``at``, the wall-clock time the
        answer arrived (the daemon builds it in one go at the end of the request); None if a
        daemon does not answer."""
        out: dict[str, dict[str, float]] = {}
        for s in self.sites:
            try:
                st = asyncio.run(request(s.directory / "control.sock",
                                         {"cmd": "status", "summary": True},
                                         timeout=STATUS_TIMEOUT))
            except (ControlError, OSError, TimeoutError, ValueError):
                return None
            at = time.time()
            pools = st.get("pools", {}).values()
            out[s.name] = {k: float(sum(int(p.get(k) or 0) for p in pools))
                           for k in ("handed_out", "fetched", "size")}
            out[s.name]["at"] = at
        return out

    def stop_daemons(self) -> None:
        """SIGTERM both daemons and wait (their ``daemon_stopped`` events carry the keys left
        in their pools)."""
        for s in self.sites:
            _stop(s.proc)
