"""The two-site lab inside the booted machine: the packaged service is site A, a second daemon
(a transient root unit) is site B, the embedded KME network runs beside them; both tunnels use
wireguard-go, in the machine's one network namespace, over loopback. This tier checks keys, not
packets (the netns and e2e tiers do): each site's allowed IPs lie inside its own address prefix,
so no route is needed and the two sites' prefixes do not collide in the one namespace.

Site A is set up the way docs/deploy.md tells an operator: keys by ``qkd-gateway keygen`` into
/etc/qkd-gateway/credentials, KMS certificates under /etc/qkd-gateway/kms, the peer's public keys
under /etc/qkd-gateway/peers, the wireguard-go drop-in linked from /usr/share/qkd-gateway.
"""

from __future__ import annotations

import base64
import json
import re

from tests.systemd.nspawn import Machine

__all__ = ["events", "exposure", "keys_agree", "read_proc_status", "setup_lab", "site_a_config",
           "status_json", "wg_psk", "write"]

A_CONFIG = "/etc/qkd-gateway/gateway.yaml"
B_CONFIG = "/etc/qkd-lab/site-b.yaml"
REKEY = "5s"
# Long enough that the failsafe (which acts 15 s before expiry) cannot act in the instant between
# a `systemctl stop` and the test reading the kept key; short enough to keep the tier quick.
REJECT_AFTER = "40s"
REJECT_AFTER_S = 40.0
# The test's own drop-in: a watchdog short enough to see it fire, an abort that does not wait
# the default 20 s for a stopped process to dump core.
TEST_DROPIN = """[Service]
WatchdogSec=10s
TimeoutAbortSec=5s
"""


def site_a_config(*, rekey: str = REKEY, on_shutdown: str = "keep") -> str:
    return f"""# site A: the packaged service (tests/systemd)
site:
  name: site-a
  sae_id: sae-a
  identity:
    ed25519_key: {{credential: ed25519.key}}
    mldsa65_key: {{credential: mldsa65.key}}
listen: {{address: 127.0.0.1, port: 7447}}
kms:
  - name: lab
    kind: etsi014
    url: https://127.0.0.1:8401
    kme_id: kme-a
    ca_file: kms/ca.crt
    client_cert: kms/client.crt
    client_key: {{credential: kms-client.key}}
peers:
  - name: site-b
    sae_id: sae-b
    address: 127.0.0.1:7448
    public_keys:
      ed25519: {{file: peers/site-b/ed25519.pub}}
      mldsa65: {{file: peers/site-b/mldsa65.pub}}
tunnels:
  - name: wg-ab
    kind: wireguard
    interface: wg-a
    peer: site-b
    policy: qkd+pqc
    kms: [lab]
    rekey_interval: {rekey}
    reject_after: {REJECT_AFTER}
    on_shutdown: {on_shutdown}
    wireguard:
      backend: userspace
      private_key: {{credential: wireguard.key}}
      listen_port: 51820
      address: 10.77.1.1/24
      peer_public_key: {{file: peers/site-b/wireguard.pub}}
      endpoint: 127.0.0.1:51821
      allowed_ips: [10.77.1.2/32]
telemetry:
  log: {{format: json, level: info}}
"""


SITE_B_CONFIG = f"""# site B: a second daemon beside the packaged one (tests/systemd)
site:
  name: site-b
  sae_id: sae-b
  identity:
    ed25519_key: {{file: b/ed25519.key}}
    mldsa65_key: {{file: b/mldsa65.key}}
state_dir: /var/lib/qkd-lab-b
control_socket: /run/qkd-lab-b/control.sock
listen: {{address: 127.0.0.1, port: 7448}}
kms:
  - name: lab
    kind: etsi014
    url: https://127.0.0.1:8402
    kme_id: kme-b
    ca_file: pki/ca.crt
    client_cert: pki/sae-b.crt
    client_key: {{file: pki/sae-b.key}}
peers:
  - name: site-a
    sae_id: sae-a
    address: 127.0.0.1:7447
    public_keys:
      ed25519: {{file: a/ed25519.pub}}
      mldsa65: {{file: a/mldsa65.pub}}
tunnels:
  - name: wg-ab
    kind: wireguard
    interface: wg-b
    peer: site-a
    policy: qkd+pqc
    kms: [lab]
    rekey_interval: {REKEY}
    reject_after: {REJECT_AFTER}
    on_shutdown: teardown
    wireguard:
      backend: userspace
      private_key: {{file: b/wireguard.key}}
      listen_port: 51821
      address: 10.78.1.2/24
      peer_public_key: {{file: a/wireguard.pub}}
      endpoint: 127.0.0.1:51820
      allowed_ips: [10.78.1.1/32]
telemetry:
  log: {{format: json, level: info}}
"""


def write(machine: Machine, path: str, text: str, mode: int = 0o644) -> None:
    target = machine.directory / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def setup_lab(machine: Machine) -> None:
    """Keys, KMS, both configurations; starts kms-sim and site B, enables site A."""
    m = machine
    # The simulated KME network: creates the test PKI (CA, KME server certs, SAE client certs).
    m.sh("systemd-run --unit=kms-sim --property=Restart=on-failure /usr/bin/qkd-gateway kms-sim"
         " --pki-dir /etc/qkd-lab/pki --kme kme-a=127.0.0.1:8401 --kme kme-b=127.0.0.1:8402"
         " --link kme-a:kme-b --sae sae-a@kme-a --sae sae-b@kme-b --key-rate 1000000"
         " --max-key-count 10000 --log-format json")
    m.wait("kms-sim ready", lambda: "kms_sim_ready" in m.journal("kms-sim"), timeout=60)
    # Site A, as docs/deploy.md does it.
    m.sh("qkd-gateway keygen --out-dir /etc/qkd-gateway/credentials --wireguard"
         " > /root/site-a.pub.yaml")
    m.sh("install -d -m 0755 /etc/qkd-gateway/kms /etc/qkd-gateway/peers/site-b"
         " && install -m 0644 /etc/qkd-lab/pki/ca.crt /etc/qkd-gateway/kms/ca.crt"
         " && install -m 0644 /etc/qkd-lab/pki/sae-a.crt /etc/qkd-gateway/kms/client.crt"
         " && install -m 0600 /etc/qkd-lab/pki/sae-a.key"
         " /etc/qkd-gateway/credentials/kms-client.key")
    # Site B's keys (root-only files: B runs as root without a sandbox).
    m.sh("qkd-gateway keygen --out-dir /etc/qkd-lab/b --wireguard > /dev/null"
         " && install -d /etc/qkd-lab/a"
         " && cp /etc/qkd-gateway/credentials/*.pub /etc/qkd-lab/a/"
         " && install -m 0644 /etc/qkd-lab/b/*.pub /etc/qkd-gateway/peers/site-b/")
    write(m, A_CONFIG, site_a_config())
    write(m, B_CONFIG, SITE_B_CONFIG)
    # The wireguard-go drop-ins, exactly as docs/deploy.md section 5 links them.
    m.sh("mkdir -p /etc/systemd/system/qkd-gateway.service.d"
         " && ln -s /usr/share/qkd-gateway/systemd/wireguard-go.conf"
         " /etc/systemd/system/qkd-gateway.service.d/"
         " && mkdir -p /etc/systemd/system/qkd-gateway-failsafe.service.d"
         " && ln -s /usr/share/qkd-gateway/systemd/wireguard-go-failsafe.conf"
         " /etc/systemd/system/qkd-gateway-failsafe.service.d/wireguard-go.conf")
    write(m, "/etc/systemd/system/qkd-gateway.service.d/zz-test.conf", TEST_DROPIN)
    m.sh("systemctl daemon-reload")
    m.sh(f"CREDENTIALS_DIRECTORY=/etc/qkd-gateway/credentials qkd-gateway check-config {A_CONFIG}")
    m.sh("systemctl enable --now qkd-gateway", timeout=180)
    m.sh("systemd-run --unit=qkd-lab-b --property=Type=notify --property=NotifyAccess=main"
         " --property=TimeoutStartSec=120 --property=RuntimeDirectory=qkd-lab-b"
         f" /usr/bin/qkd-gateway run --config {B_CONFIG}", timeout=180)


def wg_psk(machine: Machine, ifname: str) -> str | None:
    """The one peer's preshared key on ``ifname`` as `wg show` reads it back, or None."""
    out = machine.sh(f"wg show {ifname} preshared-keys", check=False)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return out.stdout.split()[1]


def keys_agree(machine: Machine) -> str | None:
    """The PSK if both sites hold the same, non-empty one."""
    a, b = wg_psk(machine, "wg-a"), wg_psk(machine, "wg-b")
    if a and a == b and a not in ("(none)",) and base64.b64decode(a) != bytes(32):
        return a
    return None


def events(text: str, name: str) -> list[dict[str, object]]:
    """JSON log lines of one event from journal text."""
    out = []
    for line in text.splitlines():
        if f'"{name}"' not in line:
            continue
        try:
            record = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if record.get("event") == name:
            out.append(record)
    return out


def status_json(machine: Machine) -> dict[str, object]:
    out = machine.sh("CREDENTIALS_DIRECTORY=/etc/qkd-gateway/credentials"
                     f" qkd-gateway status --json --config {A_CONFIG}")
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


def exposure(text: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", text)
    assert match, text[-2000:]
    return float(match.group(1))


def read_proc_status(machine: Machine, pid: int) -> dict[str, str]:
    text = machine.sh(f"cat /proc/{pid}/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
