"""A stand-in for `qkd-gateway run`, used only to test the demo lab's daemon path.

It is NOT the product and proves nothing about key exchange: both ends derive each epoch's
preshared key from a seed the test hands them (``STANDIN_SEED``, hex), with epochs aligned to
the wall clock. What it does for real: reads the generated config with gateway.config, brings up
wireguard-go tunnels with those keys, addresses and endpoints, sets a new PSK every
rekey_interval and logs ``tunnel_rekeyed`` JSON lines as the daemon will. So the lab's tunnel
wait, pings through real WireGuard, rotation reader and PSK comparison are tested end to end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.config import load_config


def main() -> int:
    cfg = load_config(Path(sys.argv[1]))
    seed = bytes.fromhex(os.environ["STANDIN_SEED"])
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    children = []
    for t in cfg.tunnels:
        wg = t.wireguard
        assert wg is not None and wg.private_key is not None
        children.append(subprocess.Popen(["wireguard-go", "-f", t.interface], env=env,
                                         stdout=subprocess.DEVNULL))
        sock = Path(f"/var/run/wireguard/{t.interface}.sock")
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.01)
        subprocess.run(["ip", "addr", "add", str(wg.address), "dev", t.interface], check=True)
        subprocess.run(["wg", "set", t.interface, "private-key", str(wg.private_key.path),
                        "listen-port", str(wg.listen_port),
                        "peer", base64.b64encode(wg.peer_public_key).decode(),
                        "endpoint", str(wg.endpoint),
                        "allowed-ips", ",".join(str(n) for n in wg.allowed_ips)], check=True)
    last = -1
    while not stop:
        epoch = int(time.time() // cfg.tunnels[0].rekey_interval)
        if epoch != last:
            for t in cfg.tunnels:
                assert t.wireguard is not None
                psk = hmac.new(seed, f"{t.name}/{epoch}".encode(), hashlib.sha256).digest()
                subprocess.run(["wg", "set", t.interface, "peer",
                                base64.b64encode(t.wireguard.peer_public_key).decode(),
                                "preshared-key", "/dev/stdin"],
                               input=base64.b64encode(psk), check=True)
                if last == -1:
                    # Up only once a key is in: a handshake under no key would fail, and
                    # WireGuard retries only after 5 s (REKEY_TIMEOUT).
                    subprocess.run(["ip", "link", "set", t.interface, "up"], check=True)
                print(json.dumps({"event": "tunnel_rekeyed", "tunnel": t.name, "epoch": epoch}),
                      flush=True)
            last = epoch
        time.sleep(0.01)
    for t in cfg.tunnels:
        subprocess.run(["ip", "link", "del", t.interface], check=False)
    for child in children:
        child.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
