"""Capture, once, what iproute2's `ip xfrm` sends to the kernel and what the kernel answers, as
fixtures for the host unit tests (tests/dataplane/xfrm/test_iproute2_bytes.py).

Needs a kernel with ESP and AES-GCM, strace and iproute2; run it in the kernel lab:

    bash scripts/kernel_lab.sh --exec \
        '.venv/bin/python -m tests.dataplane.xfrm.capture_fixtures $LAB_RESULTS/iproute2.json'
    cp .lab/results/iproute2.json tests/dataplane/xfrm/fixtures/

Independent of the code under test on purpose: requests come from `strace -xx` of `ip xfrm`
(payload bytes exactly as sent), answers from a plain netlink socket written here. The key is a
public test pattern, not a secret.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

NETNS = "qkd-xfrm-capture"
KEY_HEX = bytes(range(0x40, 0x40 + 36)).hex()
REQID = "0x51d00001"
AEAD = ["aead", "rfc4106(gcm(aes))", "0x" + KEY_HEX, "128"]
OUT4 = ["src", "192.0.2.1", "dst", "192.0.2.2"]
OUT6 = ["src", "2001:db8::1", "dst", "2001:db8::2"]

# (name, ip xfrm arguments). Each sends exactly one request.
REQUESTS: list[tuple[str, list[str]]] = [
    ("newsa_v4", ["state", "add", *OUT4, "proto", "esp", "spi", "0x00001000", "reqid", REQID,
                  "mode", "tunnel", "replay-window", "128", "flag", "esn", "af-unspec", *AEAD]),
    ("updsa_v4", ["state", "update", *OUT4, "proto", "esp", "spi", "0x00001000", "reqid", REQID,
                  "mode", "tunnel", "replay-window", "128", "flag", "esn", "af-unspec", *AEAD]),
    ("newsa_v6_full", ["state", "add", *OUT6, "proto", "esp", "spi", "0x00002000", "reqid", REQID,
                       "mode", "tunnel", "replay-window", "64", "flag", "af-unspec", *AEAD,
                       "mark", "0x10", "mask", "0xff", "if_id", "7",
                       "limit", "time-soft", "60", "limit", "time-hard", "120",
                       "limit", "byte-soft", "1000000", "limit", "byte-hard", "2000000",
                       "limit", "packet-soft", "1000", "limit", "packet-hard", "2000"]),
    ("getsa_v4", ["state", "get", *OUT4, "proto", "esp", "spi", "0x00001000"]),
    ("allocspi_v4", ["state", "allocspi", "src", "192.0.2.2", "dst", "192.0.2.1", "proto", "esp",
                     "reqid", REQID, "mode", "tunnel", "min", "0x100", "max", "0xffffffff"]),
    ("newpolicy_v4", ["policy", "add", "src", "10.1.0.0/24", "dst", "10.2.0.0/24", "dir", "out",
                      "priority", "50000", "tmpl", *OUT4, "proto", "esp", "reqid", REQID,
                      "mode", "tunnel"]),
    ("updpolicy_v6_ifid", ["policy", "update", "src", "::/0", "dst", "::/0", "dir", "fwd",
                           "priority", "50000", "mark", "0x10", "mask", "0xff", "if_id", "7",
                           "tmpl", "src", "2001:db8::2", "dst", "2001:db8::1", "proto", "esp",
                           "reqid", REQID, "mode", "tunnel"]),
    ("getpolicy_v4", ["policy", "get", "src", "10.1.0.0/24", "dst", "10.2.0.0/24", "dir", "out"]),
    ("delpolicy_v4", ["policy", "delete", "src", "10.1.0.0/24", "dst", "10.2.0.0/24",
                      "dir", "out"]),
    ("delsa_v4", ["state", "delete", *OUT4, "proto", "esp", "spi", "0x00001000"]),
]

_TYPES = {"XFRM_MSG_NEWSA": 0x10, "XFRM_MSG_DELSA": 0x11, "XFRM_MSG_GETSA": 0x12,
          "XFRM_MSG_NEWPOLICY": 0x13, "XFRM_MSG_DELPOLICY": 0x14, "XFRM_MSG_GETPOLICY": 0x15,
          "XFRM_MSG_ALLOCSPI": 0x16, "XFRM_MSG_UPDPOLICY": 0x19, "XFRM_MSG_UPDSA": 0x1A}
_FLAGS = {"NLM_F_REQUEST": 0x1, "NLM_F_ACK": 0x4, "NLM_F_REPLACE": 0x100, "NLM_F_EXCL": 0x200,
          "NLM_F_CREATE": 0x400}
_MSG = re.compile(r'nlmsg_type=(\w+), nlmsg_flags=([\w|]+)[^}]*\}, "((?:\\x[0-9a-f]{2})*)"')


def enter_netns() -> None:
    """Move this (still single-threaded) process into NETNS: sockets and children live there."""
    fd = os.open(f"/var/run/netns/{NETNS}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise SystemExit(f"setns {NETNS}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)


def ip(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise SystemExit(f"ip {' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def traced(argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run(["strace", "-f", "-xx", "-s", "65536",
                           "-e", "trace=sendmsg", "ip", "xfrm", *argv],
                          capture_output=True, text=True, check=False)
    found = [m for m in _MSG.finditer(proc.stderr) if m.group(1) in _TYPES]
    if len(found) != 1:
        raise SystemExit(f"expected one XFRM request from ip xfrm {argv}: {proc.stderr}")
    mtype, flags, payload = found[0].groups()
    return {"argv": ["ip", "xfrm", *argv], "type": _TYPES[mtype],
            "flags": sum(_FLAGS[f] for f in flags.split("|")),
            "payload": bytes.fromhex(payload.replace("\\x", "")).hex(), "ip_rc": proc.returncode,
            "ip_stdout": proc.stdout}


def _netlink(groups: tuple[int, ...] = ()) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 6)  # NETLINK_XFRM
    sock.bind((0, 0))
    for group in groups:
        sock.setsockopt(270, 1, group)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP
    return sock


def dump(msg_type: int) -> list[str]:
    """Every datagram of a GETSA/GETPOLICY dump, as hex (request: a bare header)."""
    sock = _netlink()
    sock.send(struct.pack("=IHHII", 16, msg_type, 0x301, 1, 0))  # REQUEST | DUMP
    out = []
    while True:
        data = sock.recv(65536)
        out.append(data.hex())
        if struct.unpack_from("=H", data, 4)[0] in (2, 3):  # NLMSG_ERROR / NLMSG_DONE
            break
    sock.close()
    return out


def notifications(seconds: float) -> list[str]:
    """Collect EXPIRE and ACQUIRE datagrams for ``seconds`` while the caller provokes them."""
    sock = _netlink(groups=(1, 2))  # XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE
    sock.settimeout(0.2)
    out: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.append(sock.recv(65536).hex())
        except TimeoutError:
            continue
    sock.close()
    return out


def main(target: Path) -> None:
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    enter_netns()
    try:
        ip("link", "set", "lo", "up")
        fixtures: dict[str, Any] = {
            "kernel": subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip(),
            "iproute2": subprocess.run(["ip", "-V"], capture_output=True, text=True).stdout.strip(),
            "key_hex": KEY_HEX, "requests": {}}
        for name, argv in REQUESTS:
            fixtures["requests"][name] = traced(argv)
        # A state of each kind for the dump: full v4 and v6 SAs and a larval (allocated) SA.
        ip("xfrm", "state", "add", *OUT4, "proto", "esp", "spi", "0x00001000", "reqid", REQID,
           "mode", "tunnel", "replay-window", "128", "flag", "esn", "af-unspec", *AEAD)
        ip("xfrm", "policy", "add", "src", "10.1.0.0/24", "dst", "10.2.0.0/24", "dir", "out",
           "priority", "50000", "tmpl", *OUT4, "proto", "esp", "reqid", REQID, "mode", "tunnel")
        fixtures["sa_dump"] = dump(0x12)
        fixtures["policy_dump"] = dump(0x15)
        fixtures["ip_state_list"] = ip("-s", "xfrm", "state")
        fixtures["ip_policy_list"] = ip("xfrm", "policy")
        # EXPIRE (soft after 1 s) and ACQUIRE (a packet meets the out policy without SA).
        collected: list[str] = []
        listener = threading.Thread(target=lambda: collected.extend(notifications(10.0)))
        listener.start()
        time.sleep(0.5)
        ip("xfrm", "state", "delete", *OUT4, "proto", "esp", "spi", "0x00001000")
        # Another reqid, so that the out policy (REQID) still has no SA and must ACQUIRE.
        ip("xfrm", "state", "add", *OUT4, "proto", "esp", "spi", "0x00003000", "reqid",
           "0x51d00002", "mode", "tunnel", "replay-window", "32", "flag", "af-unspec", *AEAD,
           "limit", "time-soft", "1", "limit", "time-hard", "600")
        ip("link", "add", "d0", "type", "dummy")  # a route via lo would bypass XFRM
        ip("link", "set", "d0", "up")
        ip("addr", "add", "192.0.2.1/24", "dev", "d0")
        ip("addr", "add", "10.1.0.1/32", "dev", "d0")
        ip("route", "add", "10.2.0.0/24", "dev", "d0", "src", "10.1.0.1")
        ping = subprocess.run(["ping", "-c", "1", "-W", "1", "-I", "10.1.0.1", "10.2.0.9"],
                              capture_output=True, text=True, check=False)
        listener.join()
        fixtures["ping"] = ping.stdout + ping.stderr
        fixtures["notifications"] = collected
        target.write_text(json.dumps(fixtures, indent=1, sort_keys=True) + "\n")
        print(f"wrote {target}: {len(REQUESTS)} requests, {len(collected)} notifications")
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
