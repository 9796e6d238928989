"""The peer: two strongSwan charon daemons in network namespaces joined by a veth pair, many
CHILD_SAs under one or more IKE SAs, each rekeyed explicitly over VICI as fast as charon goes.

Set-up (facts in ../shared/reference/peer-strongswan.md): IKEv2 with PSK authentication, IKE
``aes256gcm16-prfsha384-x25519``, ESP ``aes256gcm16-x25519`` (a fresh X25519 on every CHILD_SA
rekey), ``rekey_time = 0`` so only the rekeys asked for happen; the host kernel has no ESP, so
charon's kernel-libipsec plugin carries ESP in user space over a TUN device, with one local /32
on ``lo`` per traffic selector. Each charon runs in a private mount namespace with its own
directory on /run (charon writes a fixed pid file there).

A round asks every CHILD_SA to rekey once, pipelined on one VICI connection, counts the
``child-rekey`` events on a second one, then waits until every old SA is deleted. The CPU of a
round is the on-CPU time of both charons (all threads) from before the first request to after
the last deletion.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.fullstack.procstat import cpu_ns, sample

__all__ = ["CharonPair", "available"]

CHARON = Path("/usr/lib/ipsec/charon")
PLUGINS = ("random nonce openssl aes sha2 hmac gcm curve25519 kdf pem pkcs1 x509 pubkey "
           "kernel-libipsec kernel-netlink socket-default vici")
ADDR = ("192.168.251.1", "192.168.251.2")
READY_TIMEOUT = 30.0
ROUND_TIMEOUT = 120.0


def available() -> str | None:
    """None if the peer can run here, else why not."""
    if not CHARON.exists():
        return ("strongSwan is not installed: apt-get install --no-install-recommends "
                "strongswan-charon strongswan-swanctl libcharon-extra-plugins "
                "libstrongswan-standard-plugins libstrongswan-extra-plugins")
    try:
        import vici  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return "python package vici is missing: pip install vici"
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun (kernel-libipsec needs a TUN device)"
    return None


def _ip(*args: str, netns: str | None = None, stdin: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(argv, check=True, capture_output=True, text=True, input=stdin, timeout=60)


def _ts(side: int, i: int) -> str:
    return f"10.{61 + side}.{i // 256}.{i % 256}/32"


class CharonPair:
    """``with CharonPair(ike_sas=4, children=50) as p: p.round()``."""

    def __init__(self, ike_sas: int, children: int) -> None:
        self.ike_sas = ike_sas
        self.children = children  # per IKE SA
        self.root = Path(tempfile.mkdtemp(prefix="qkd-bench-charon-"))
        tag = f"{os.getpid() % 100000}"
        self.netns = (f"qbsw{tag}a", f"qbsw{tag}b")
        self.procs: list[subprocess.Popen[bytes]] = []
        self._made_ns: list[str] = []

    # -- set-up -------------------------------------------------------------------------------
    def __enter__(self) -> CharonPair:
        try:
            self._network()
            for side in (0, 1):
                self._start(side)
            self._configure()
            self._establish()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for ns in self._made_ns:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", ns)
        shutil.rmtree(self.root, ignore_errors=True)

    def _network(self) -> None:
        a, b = self.netns
        for ns in (a, b):
            _ip("netns", "add", ns)
            self._made_ns.append(ns)
        _ip("link", "add", "veth0", "type", "veth", "peer", "name", "veth1", netns=a)
        _ip("link", "set", "veth1", "netns", b, netns=a)
        n = self.ike_sas * self.children
        for side, ns in enumerate((a, b)):
            _ip("addr", "add", f"{ADDR[side]}/24", "dev", f"veth{side}", netns=ns)
            _ip("link", "set", f"veth{side}", "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
            batch = "".join(f"addr add {_ts(side, i)} dev lo\n" for i in range(n))
            _ip("-batch", "-", netns=ns, stdin=batch)

    def _start(self, side: int) -> None:
        d = self.root / f"side{side}"
        (d / "run").mkdir(parents=True)
        conf = d / "strongswan.conf"
        conf.write_text(
            "charon {\n"
            f"  load = {PLUGINS}\n"
            "  install_virtual_ip = no\n"
            # Old inbound SAs go at once (default: kept 5 s), so a round ends when charon's work
            # for it is done, deletion included.
            "  delete_rekeyed_delay = 0\n"
            "  plugins {\n"
            f"    vici {{\n      socket = unix://{d / 'vici.sock'}\n    }}\n"
            "  }\n"
            "  filelog {\n"
            f"    bench {{\n      path = {d / 'charon.log'}\n      default = 0\n    }}\n"
            "  }\n"
            "  syslog {\n    daemon {\n      default = -1\n    }\n  }\n"
            "}\n")
        script = (f"mount --bind {d / 'run'} /run && "
                  f"exec env STRONGSWAN_CONF={conf} {CHARON}")
        out = os.open(d / "stdout.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", self.netns[side], "unshare", "--mount",
                 "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True))
        finally:
            os.close(out)

    def session(self, side: int) -> Any:
        import vici

        path = self.root / f"side{side}" / "vici.sock"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                return vici.Session(s)
            except OSError:
                s.close()
                if time.monotonic() > deadline or self.procs[side].poll() is not None:
                    raise RuntimeError(f"charon {side}: no VICI; see {path.parent}") from None
                time.sleep(0.1)

    def _names(self) -> list[tuple[str, list[str]]]:
        return [(f"ike{k}", [f"c{k}_{j}" for j in range(self.children)])
                for k in range(self.ike_sas)]

    def _configure(self) -> None:
        self.vici = [self.session(0), self.session(1)]
        ids = [(f"a{k}.bench", f"b{k}.bench") for k in range(self.ike_sas)]
        for side in (0, 1):
            v = self.vici[side]
            v.load_shared({"type": "IKE", "data": "bench-psk-not-secret-0123456789",
                           "owners": [x for pair in ids for x in pair]})
            for k, (ike, children) in enumerate(self._names()):
                mine, theirs = ids[k][side], ids[k][1 - side]
                kids = {}
                for j, name in enumerate(children):
                    i = k * self.children + j
                    kids[name] = {
                        "local_ts": [_ts(side, i)], "remote_ts": [_ts(1 - side, i)],
                        "esp_proposals": ["aes256gcm16-x25519"], "rekey_time": "0",
                        "life_time": "0", "start_action": "none", "mode": "tunnel",
                    }
                v.load_conn({ike: {
                    "version": "2", "local_addrs": [ADDR[side]], "remote_addrs": [ADDR[1 - side]],
                    "proposals": ["aes256gcm16-prfsha384-x25519"], "rekey_time": "0",
                    "reauth_time": "0", "unique": "never", "dpd_delay": "0",
                    "local": {"auth": "psk", "id": mine},
                    "remote": {"auth": "psk", "id": theirs},
                    "children": kids,
                }})

    def _establish(self) -> None:
        for ike, children in self._names():
            for name in children:
                for _ in self.vici[0].initiate({"child": name, "ike": ike, "timeout": "20000"}):
                    pass
        self._wait_settled()

    def _child_count(self) -> tuple[int, int]:
        """(installed CHILD_SAs, CHILD_SAs in any other state) on the initiator."""
        installed = other = 0
        for ike in self.vici[0].list_sas():
            for sa in ike.values():
                for child in sa.get("child-sas", {}).values():
                    if child.get("state") == b"INSTALLED":
                        installed += 1
                    else:
                        other += 1
        return installed, other

    def _wait_settled(self) -> None:
        want = self.ike_sas * self.children
        deadline = time.monotonic() + ROUND_TIMEOUT
        while True:
            installed, other = self._child_count()
            if installed == want and other == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"charon: {installed}/{want} CHILD_SAs installed, "
                                   f"{other} in other states")
            time.sleep(0.05)

    # -- measurement --------------------------------------------------------------------------
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def round(self) -> dict[str, Any]:
        """Rekey every CHILD_SA once; rekeys/s and CPU ms per rekey of both charons."""
        want = self.ike_sas * self.children
        seen = 0
        done = threading.Event()
        listener = self.session(0)
        ready = threading.Event()

        def listen() -> None:
            nonlocal seen
            events = listener.listen(["child-rekey"], timeout=0.2)
            ready.set()
            for kind, _msg in events:
                if kind is not None:
                    seen += 1
                    if seen >= want:
                        break
                if done.is_set():
                    break
            done.set()

        t = threading.Thread(target=listen, daemon=True)
        t.start()
        ready.wait(5)
        time.sleep(0.2)  # the registration is in place
        cpu0 = sum(cpu_ns(p) for p in self.pids())
        t0 = time.monotonic()
        for _ike, children in self._names():
            for name in children:
                self.vici[0].rekey({"child": name})
        done.wait(ROUND_TIMEOUT)
        done.set()
        self._wait_settled()
        elapsed = time.monotonic() - t0
        cpu = sum(cpu_ns(p) for p in self.pids()) - cpu0
        t.join(5)
        with contextlib.suppress(Exception):
            listener.close()
        return {"rekeys": seen, "seconds": elapsed, "rekeys_per_s": seen / elapsed,
                "cpu_ms_per_rekey": cpu / 1e6 / seen if seen else None}

    def rss_mb(self) -> list[float]:
        return [round(sample(p).rss_kb / 1024, 1) for p in self.pids()]
