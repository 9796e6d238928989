"""A real Debian mosquitto on loopback for the MQTT tests: one plain and one mutual-TLS listener."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.kms.sim.pki import Pki, ensure_pki

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
BROKER_CERT_ID = "mqtt-broker"
GATEWAY_SAE = "gw-site-a"
OBSERVER_SAE = "observer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Broker:
    """mosquitto with a generated config; restartable on the same ports."""

    def __init__(self, directory: Path) -> None:
        assert MOSQUITTO is not None
        self.dir = directory
        self.pki: Pki = ensure_pki(
            directory / "pki",
            kmes={BROKER_CERT_ID: ["127.0.0.1", "localhost"]},
            saes=[GATEWAY_SAE, OBSERVER_SAE],
        )
        self.port = free_port()
        self.tls_port = free_port()
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self.config.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    "allow_anonymous true",
                    "persistence false",
                    # Running as root in the test machine: keep root so it can read the 0600 keys.
                    "user root",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    f"listener {self.port} 127.0.0.1",
                    f"listener {self.tls_port} 127.0.0.1",
                    f"cafile {self.pki.ca_cert}",
                    f"certfile {self.pki.kme_cert(BROKER_CERT_ID)}",
                    f"keyfile {self.pki.kme_key(BROKER_CERT_ID)}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "",
                ]
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self._proc is None
        log = self.log.open("ab")
        assert MOSQUITTO is not None
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 5
        _wait_listening(self.port, deadline)
        _wait_listening(self.tls_port, deadline)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._proc is not None:
            self._proc.send_signal(sig)
            self._proc.wait(timeout=5)
            self._proc = None

    def client_tls(self, sae: str) -> dict[str, Path]:
        return {
            "tls_ca": self.pki.ca_cert,
            "tls_cert": self.pki.sae_cert(sae),
            "tls_key": self.pki.sae_key(sae),
        }
