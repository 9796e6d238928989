"""Every class of mistake is reported with its YAML path, line, what is wrong and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]


def problems(write_config: Write, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    return str(err.value)


def test_four_problems_at_once_with_paths_and_lines(write_config: Write, site_dir: Path) -> None:
    text = (
        BASE.replace("    kme_id: kme-a\n", "    kme_id: kme-a\n    tls: true\n")
        .replace("    ca_file: pki/ca.crt\n",
                 "    ca_file: pki/missing-ca.crt\n    timeouts: {connect: 5s, retry: 3}\n")
        + "      listen_port: many\n"
    )
    assert problems(write_config, text) == "\n".join([
        "kms[0].tls (line 12): unknown key 'tls'; allowed here: name, kind, url, kme_id, "
        "ca_file, client_cert, client_key, timeouts, pool, low_stock, skip",
        f"kms[0].ca_file (line 13): file {site_dir}/pki/missing-ca.crt does not exist; "
        "check the path (relative paths start at this file's folder)",
        "kms[0].timeouts.retry (line 14): unknown key 'retry'; allowed here: connect, request",
        "tunnels[0].wireguard.listen_port (line 34): 'many' is not a port number; "
        "write a number from 1 to 65535",
    ])


def test_yaml_syntax_error_has_line_and_column(write_config: Write) -> None:
    text = BASE.replace("    kind: wireguard\n", "    kind: wireguard\n   bad: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    [problem] = err.value.problems
    assert (problem.line, problem.column) == (25, 4)
    assert str(problem).startswith("line 25, column 4: YAML syntax error: ")
    assert problem.fix == "check the indentation and quoting here and on the line above"


def test_unbracketed_ipv6_endpoint_in_flow_syntax_is_a_yaml_error(write_config: Write) -> None:
    text = BASE.replace("address: 198.51.100.2", "address: [2001:db8::6]:7447")
    assert problems(write_config, text).startswith("line 18, column 27: YAML syntax error")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param("  sae_id: sae-alpha\n", "",
                     "site.sae_id (line 1): required key is missing; add sae_id: "
                     "(see docs/config.md)", id="missing"),
        pytest.param("    kms: [kms-a]\n", "    kms: [kms-a]\n    rekey_intervall: 60s\n",
                     "tunnels[0].rekey_intervall (line 28): unknown key 'rekey_intervall'; did "
                     "you mean 'rekey_interval'? allowed here: name, kind, interface, peer, "
                     "policy, kms, rekey_interval, reject_after, on_shutdown, wireguard, xfrm",
                     id="unknown-key-suggestion"),
        pytest.param("kms: [kms-a]", "kms: kms-a",
                     "tunnels[0].kms (line 27): expected a list, found text; write [a, b] or "
                     "one '- item' per line", id="wrong-type-list"),
        pytest.param("  identity:\n", "  identity: abc\n  x:\n",
                     "site.identity (line 4): expected a mapping, found text; write indented "
                     "key: value lines below this key\n"
                     "site.x (line 5): unknown key 'x'; allowed here: name, sae_id, identity",
                     id="wrong-type-mapping"),
        pytest.param("    kme_id: kme-a\n", "    kme_id: kme-a\n    pool: {target: 0, batch: 1.5}\n",
                     "kms[0].pool.batch (line 12): '1.5' is not a whole number; write e.g. 64\n"
                     "kms[0].pool.target (line 12): '0' is too small; write a number greater "
                     "than 0", id="wrong-type-number"),
        pytest.param("    kind: wireguard\n", "    kind: wireguar\n",
                     "tunnels[0].kind (line 24): 'wireguar' is not a valid choice; write one "
                     "of: 'wireguard' or 'xfrm'", id="enum"),
        pytest.param("    kms: [kms-a]\n", "    kms: [kms-a]\n    rekey_interval: 5x\n",
                     "tunnels[0].rekey_interval (line 28): '5x' is not a duration; write e.g. "
                     "120s or 5m", id="duration"),
        pytest.param("address: 198.51.100.2", "address: 198.51.100.2:99999",
                     "peers[0].address (line 18): '99999' is not a port number; write a number "
                     "from 1 to 65535 after the ':'", id="address-port"),
        pytest.param("address: 198.51.100.2", "address: 2001:db8::1",
                     "peers[0].address (line 18): '2001:db8::1': an IPv6 address needs "
                     "brackets; write e.g. [2001:db8::1]:7447", id="address-ipv6"),
        pytest.param("[10.2.0.0/16]", "[10.2.0.1/16, bogus]",
                     "tunnels[0].wireguard.allowed_ips[0] (line 31): '10.2.0.1/16' has host "
                     "bits set; write 10.2.0.0/16\n"
                     "tunnels[0].wireguard.allowed_ips[1] (line 31): 'bogus' is not a network "
                     "in CIDR notation; write e.g. 10.1.0.0/16 or 2001:db8:1::/48", id="cidr"),
        pytest.param("ed25519: {file: keys/beta/ed25519.pub}", "ed25519: not*base64",
                     "peers[0].public_keys.ed25519 (line 20): this Ed25519 public key is not "
                     "valid base64; copy it from `qkd-gateway keygen` output (or the "
                     "peer's .pub file)", id="base64"),
        pytest.param("ed25519: {file: keys/beta/ed25519.pub}", "ed25519: AAAA",
                     "peers[0].public_keys.ed25519 (line 20): this Ed25519 public key decodes "
                     "to 3 bytes; Ed25519 public keys are 32; copy the whole key from "
                     "`qkd-gateway keygen` output (or the peer's .pub file)", id="key-length"),
        pytest.param("mldsa65: {file: keys/beta/mldsa65.pub}",
                     "mldsa65: {file: keys/beta/ed25519.pub}",
                     "peers[0].public_keys.mldsa65 (line 21): file {site}/keys/beta/ed25519.pub "
                     "decodes to 32 bytes; ML-DSA-65 public keys are 1952; copy the whole key "
                     "from `qkd-gateway keygen` output (or the peer's .pub file)",
                     id="key-file-wrong-kind"),
        pytest.param("interface: wg-beta", "interface: wg-beta-very-long",
                     "tunnels[0].interface (line 25): 'wg-beta-very-long' is not a valid "
                     "interface name; use at most 15 characters without '/', ':' or spaces, "
                     "e.g. wg-cluj", id="ifname"),
        pytest.param("    peer: beta\n", "    peer: bet\n",
                     "tunnels[0].peer (line 26): no peer named 'bet'; defined peers: beta",
                     id="peer-reference"),
        pytest.param("kms: [kms-a]", "kms: [kms-a, kms-b]",
                     "tunnels[0].kms[1] (line 27): no KMS named 'kms-b'; defined kms: kms-a",
                     id="kms-reference"),
        pytest.param("    kms: [kms-a]\n", "    kms: [kms-a]\n    rekey_interval: 3m\n",
                     "tunnels[0].rekey_interval (line 28): reject_after (3m, the default) must "
                     "be longer than rekey_interval (3m); e.g. rekey_interval: 120s with "
                     "reject_after: 180s", id="timers"),
        pytest.param("    kind: wireguard\n", "    kind: xfrm\n",
                     "tunnels[0].xfrm (line 23): required for kind: xfrm; add the xfrm: block",
                     id="kind-block"),
        pytest.param("    kms: [kms-a]\n", "    policy: qkd\n",
                     "tunnels[0].kms (line 23): policy qkd needs at least one KMS; list KMS "
                     "names, e.g. kms: [ronaqci], or choose policy pqc", id="policy-kms"),
        pytest.param("    kme_id: kme-a\n", "",
                     "kms[0].kme_id (line 8): required for kind: etsi014 (the KME ID is "
                     "checked against the KME's certificate); add kme_id: ID", id="kme-id"),
        pytest.param("client_key: {file: pki/sae-alpha.key}",
                     "client_key: {file: pki/sae-alpha.key, credential: k}",
                     "kms[0].client_key (line 14): give exactly one of 'file' or 'credential'; "
                     "put the key in a file and write {file: PATH}, or use {credential: NAME} "
                     "under systemd", id="secret-source-both"),
        pytest.param("    kind: wireguard\n", "    kind: wireguard\n    kind: xfrm\n",
                     "tunnels[0].kind (line 25): key 'kind' appears twice (first on line 24); "
                     "remove one of them", id="duplicate-key"),
        pytest.param("      allowed_ips: [10.2.0.0/16]\n",
                     "      allowed_ips: [10.2.0.0/16]\n      adopt: true\n",
                     "tunnels[0].wireguard.private_key (line 29): with adopt: true the gateway "
                     "only sets the preshared key and never touches private_key; remove "
                     "private_key, or set adopt: false", id="adopt"),
    ],
)
def test_error_class(write_config: Write, site_dir: Path, old: str, new: str,
                     expected: str) -> None:
    assert old in BASE
    assert problems(write_config, BASE.replace(old, new)) == expected.replace(
        "{site}", str(site_dir))


def test_cross_tunnel_rules(write_config: Write) -> None:
    second = (
        "  - name: t0\n    kind: wireguard\n    interface: wg-beta\n    peer: beta\n"
        "    kms: [kms-a, kms-a]\n    wireguard:\n"
        "      peer_public_key: {file: keys/beta/wireguard.pub}\n"
        "      private_key: {file: keys/alpha/wireguard.key}\n"
        "      allowed_ips: [10.2.3.0/24]\n"
    )
    assert problems(write_config, BASE + second) == "\n".join([
        "tunnels[1].name (line 32): tunnel name 't0' is already used by tunnels[0]; give each "
        "tunnel name a different value",
        "tunnels[1].kms[1] (line 36): KMS 'kms-a' is listed twice; list each KMS once",
        "tunnels[1].wireguard.peer_public_key (line 38): the same WireGuard peer as tunnels[0] "
        "on interface 'wg-beta'; each tunnel on a shared interface has its own WireGuard peer",
        "tunnels[1].wireguard.allowed_ips[0] (line 40): 10.2.3.0/24 overlaps 10.2.0.0/16 of "
        "tunnels[0].wireguard.allowed_ips[0] (tunnel t0); route each network through one "
        "tunnel only",
    ])


def test_inline_secret_is_located_never_quoted(write_config: Write) -> None:
    secret = "c2VjcmV0LWtleS1ieXRlcy10aGF0LW11c3Qtbm90LWxlYWs="
    text = BASE.replace("client_key: {file: pki/sae-alpha.key}", f"client_key: {secret}")
    text = text.replace("ed25519_key: {file: keys/alpha/ed25519.key}", f'ed25519_key: "{secret}"')
    text = text.replace("  identity:\n", f"  private_key: {secret}\n  identity:\n")
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    out = str(err.value) + repr(err.value) + repr(err.value.problems)
    assert secret not in out and secret[:12] not in out
    lines = str(err.value).splitlines()
    assert lines[0] == "site.private_key (line 4): unknown key 'private_key'; allowed here: " \
        "name, sae_id, identity"
    assert lines[1].startswith("site.identity.ed25519_key (line 6): a secret must not be")
    assert lines[2] == (
        "kms[0].client_key (line 15): a secret must not be written into the configuration; "
        "put the key in a file and write {file: PATH}, or use {credential: NAME} under systemd"
    )


def test_private_key_readable_by_others_is_refused(write_config: Write, site_dir: Path) -> None:
    loose = site_dir / "keys/alpha/loose.key"
    loose.write_bytes((site_dir / "keys/alpha/wireguard.key").read_bytes())
    loose.chmod(0o644)
    text = BASE.replace("keys/alpha/wireguard.key", "keys/alpha/loose.key")
    assert problems(write_config, text) == (
        f"tunnels[0].wireguard.private_key.file (line 29): private key file {loose} is "
        f"readable by others (mode 0644); run chmod 600 {loose}"
    )


def test_whole_file_problems(write_config: Write, tmp_path: Path) -> None:
    assert problems(write_config, "") == (
        "line 1: the file is empty; start from an example in configs/ (see docs/config.md)")
    assert problems(write_config, "- a\n") == (
        "line 1: the top level must be a mapping of keys; start with `site:` (see "
        "docs/config.md)")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.yaml")
    assert str(err.value) == (
        f"file: configuration file {tmp_path}/absent.yaml does not exist; check the path, or "
        "start from an example in configs/")
