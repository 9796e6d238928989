"""What the broker sees of a rotating site: retained tunnel statuses per rekey, with MQTT on.

    .venv/bin/python -m bench.fullstack.mqtt_status [--tunnels 1000] [--interval 60]
                                                    [--seconds 130] [--source CHECKOUT]

The full-stack pair of bench/fullstack/gateways.py (record data plane, the embedded KME network)
with ``telemetry.mqtt`` pointing at a Debian mosquitto started here on loopback. Once every tunnel
is keyed, ``mosquitto_sub`` listens to alpha's ``<prefix>/alpha/tunnel/+/status`` for
``--seconds`` (choose a window that holds rotation waves and reconciliation passes). Prints the
status messages received (the first N are the retained ones a new subscriber gets), alpha's
completed rekeys in the window (a status per rekey is the expected rate), and the warning lines
alpha's log holds from aiomqtt (``There are N pending publish calls.``). ``--source`` runs the
daemons from another checkout (before/after).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fullstack.gateways import GatewayPair, Site, free_port

REKEYED = frozenset({"tunnel_rekeyed"})


def _start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(f"allow_anonymous true\nlistener {port} 127.0.0.1\nlog_dest stderr\n")
    with (directory / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=log)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        probe = subprocess.run(["mosquitto_pub", "-p", str(port), "-t", "probe", "-n"],
                               capture_output=True, check=False, timeout=5)
        if probe.returncode == 0:
            return proc, port
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("mosquitto did not start")


class _MqttPair(GatewayPair):
    def __init__(self, *args: Any, broker_port: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.broker_port = broker_port

    def _config(self, me: Site, other: Site, peer_keys: list[str]) -> dict[str, Any]:
        config = super()._config(me, other, peer_keys)
        config["telemetry"]["mqtt"] = {"url": f"mqtt://127.0.0.1:{self.broker_port}"}
        return config


def measure(n: int, interval: float, seconds: float, source: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qkd-bench-mqtt-") as tmp:
        broker, port = _start_broker(Path(tmp))
        try:
            with _MqttPair(n, interval, interval * 1.5, source=source, broker_port=port) as pair:
                keyed_s = pair.wait_keyed(120 + n * 0.09)
                alpha = pair.sites[0]
                # A file, not a pipe: a full pipe stalls mosquitto_sub until the broker drops it.
                received = Path(tmp) / "statuses.txt"
                with received.open("w") as out:
                    sub = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-t",
                                            "qkd-gateway/alpha/tunnel/+/status", "-v"],
                                           stdout=out)
                    try:
                        time.sleep(1)
                        alpha.log.skip()
                        time.sleep(seconds)
                    finally:  # an interrupted run leaves no subscriber behind
                        sub.terminate()
                        sub.wait(timeout=10)
                rekeys = len(alpha.log.read(REKEYED))
                warnings = sum("pending publish calls" in line for line in
                               (alpha.directory / "daemon.log").read_text().splitlines())
                messages = sum(1 for line in received.read_text().splitlines() if line.strip())
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    # Every tunnel is keyed, so a new subscriber first gets N retained statuses, then live ones.
    return {"source": str(source or "this checkout"), "tunnels": n, "interval_s": interval,
            "keyed_s": round(keyed_s, 1), "window_s": seconds, "status_messages": messages,
            "live_status_messages": messages - n, "alpha_rekeys": rekeys,
            "pending_publish_warnings_in_alpha_log": warnings}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tunnels", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=60.0, help="rekey_interval, seconds")
    ap.add_argument("--seconds", type=float, default=130.0)
    ap.add_argument("--source", type=Path, default=None,
                    help="run the daemons from another checkout (before/after)")
    args = ap.parse_args()
    print(json.dumps(measure(args.tunnels, args.interval, args.seconds, args.source)),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
