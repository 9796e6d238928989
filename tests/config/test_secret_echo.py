"""Key material pasted where a path, credential name, name or key belongs is never echoed."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.config.errors import looks_like_key, render_path
from gateway.config.fields import show
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]
_FIX = "put the key in a file and write {file: PATH}, or use {credential: NAME} under systemd"


def _pem_body(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines() if "-----" not in line)


def _spellings(secret: str) -> list[str]:
    """The secret and every 12-character piece of it: no fragment may appear either."""
    return [secret] + [secret[i:i + 12] for i in range(0, len(secret) - 11, 4)]


def _problems(write_config: Write, text: str, secret: str,
              environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text), environ=environ or {})
    out = str(err.value) + repr(err.value.problems)
    for piece in _spellings(secret):
        assert piece not in out, "key material echoed"
    return str(err.value).splitlines()


@pytest.fixture
def wg_key(site_dir: Path) -> str:
    return (site_dir / "keys/alpha/wireguard.key").read_text().strip()


def test_key_pasted_as_file_path(write_config: Write, wg_key: str) -> None:
    text = BASE.replace("client_key: {file: pki/sae-alpha.key}", f"client_key: {{file: {wg_key}}}")
    assert _problems(write_config, text, wg_key) == [
        f"kms[0].client_key.file (line 14): no such file, and this looks like key material "
        f"rather than a path (not shown); {_FIX}"]


def test_key_pasted_as_credential_name(write_config: Write, wg_key: str, tmp_path: Path) -> None:
    text = BASE.replace("client_key: {file: pki/sae-alpha.key}",
                        f"client_key: {{credential: '{wg_key}'}}")
    for environ in ({}, {"CREDENTIALS_DIRECTORY": str(tmp_path)}):
        assert _problems(write_config, text, wg_key, environ) == [
            f"kms[0].client_key.credential (line 14): no such credential, and this looks like "
            f"key material rather than a name (not shown); {_FIX}"]


def test_pem_key_pasted_as_certificate_path(write_config: Write, site_dir: Path) -> None:
    pem = (site_dir / "pki/sae-alpha.key").read_text()
    block = "|\n" + "".join(f"      {line}\n" for line in pem.splitlines())
    text = BASE.replace("client_cert: pki/sae-alpha.crt\n", f"client_cert: {block}")
    assert _problems(write_config, text, _pem_body(site_dir / "pki/sae-alpha.key")) == [
        "kms[0].client_cert (line 13): no such file, and this looks like key material rather "
        "than a path (not shown); put it in a file and write the file's path here"]


def test_key_pasted_into_name_fields(write_config: Write, site_dir: Path, wg_key: str) -> None:
    body = _pem_body(site_dir / "pki/sae-alpha.key")
    hex_key = base64.b64decode(wg_key).hex()  # 64 hex digits: a valid name, but no such peer
    text = (BASE.replace("  name: alpha\n", f"  name: '{body}'\n")
            .replace("    peer: beta\n", f"    peer: {hex_key}\n"))
    lines = _problems(write_config, text, body)
    for piece in _spellings(hex_key):
        assert piece not in "\n".join(lines)
    assert lines == [
        "site.name (line 2): <hidden: looks like key material> is not a valid name; use 1-64 "
        "letters, digits, '.', '_' or '-', starting with a letter or digit",
        "tunnels[0].peer (line 26): no peer named <hidden: looks like key material>; defined "
        "peers: beta",
    ]


def test_key_pasted_as_a_mapping_key(write_config: Write, wg_key: str) -> None:
    text = BASE.replace("  sae_id: sae-alpha\n", f"  sae_id: sae-alpha\n  '{wg_key}': 1\n")
    assert _problems(write_config, text, wg_key) == [
        "site.<hidden> (line 4): unknown key <hidden: looks like key material>; allowed here: "
        "name, sae_id, identity"]


@pytest.mark.parametrize("text", [
    "-----BEGIN PRIVATE KEY-----", "MC4CAQAwBQYDK2VwBCIEIGx5Yk9wZ1h0", "0123456789abcdef" * 2,
    "kH3x+9Qa/Zr2LmWp8Tn0Yb4V", "  aGVsbG8gd29ybGQgaGVs\n  bG8gd29ybGQ=\n",
    "bCpArstgChJPWtsykrsgdoZb"])
def test_looks_like_key(text: str) -> None:
    assert looks_like_key(text)
    assert show(text) == "<hidden: looks like key material>"


@pytest.mark.parametrize("text", [
    "keys/bucharest/ed25519.key", "/etc/qkd-gateway/keys/wireguard.key", "kms-bucharest",
    "sae-cluj-napoca", "10.77.0.0/16", "2001:db8::1", "wg-beta-very-long", "120s",
    "qkd-gateway/bucharest", "https://127.0.0.1:8443", "abcdefghijklmnopqrstuvwxyz"])
def test_ordinary_values_are_quoted(text: str) -> None:
    assert not looks_like_key(text)
    assert show(text) == f"'{text}'"


def test_render_path_hides_key_like_keys() -> None:
    assert render_path(("kms", 0, "MC4CAQAwBQYDK2VwBCIEIGx5")) == "kms[0].<hidden>"


def test_key_inside_a_url_tag_or_alias_name(write_config: Write, wg_key: str) -> None:
    name = wg_key[:24].replace("/", "a").replace("+", "b")
    # ('/' and '+' replaced: a '/' would end the host part and leave a valid URL with a path.)
    url = BASE.replace("url: https://127.0.0.1:8443", f"url: https://{name}@127.0.0.1:8443")
    assert _problems(write_config, url, name) == [
        "kms[0].url (line 10): <hidden: looks like key material> is not scheme://host:port; "
        "write e.g. https://127.0.0.1:8443"]
    tag = BASE.replace("  sae_id: sae-alpha\n", f"  sae_id: !{name} x\n")
    assert _problems(write_config, tag, name) == [
        "site.sae_id (line 3, column 11): unsupported YAML tag !<hidden>; remove the tag and "
        "write plain text, numbers, lists or mappings"]
    alias = BASE.replace("  sae_id: sae-alpha\n", f"  sae_id: [*{name}]\n")
    assert _problems(write_config, alias, name) == [
        "line 3, column 12: YAML syntax error: found undefined alias '<hidden>'; check the "
        "indentation and quoting here and on the line above"]


def test_random_keys_and_their_fragments_are_recognised() -> None:
    rng = random.Random(2026)
    missed_keys = missed_fragments = 0
    for _ in range(10000):
        raw = rng.randbytes(rng.randint(16, 64))
        assert looks_like_key(raw.hex())
        for b64 in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            missed_keys += not looks_like_key(b64)
            start = rng.randint(0, len(b64) - 20)
            missed_fragments += not looks_like_key(b64[start:start + 20])
    # Measured: 0 of 20000 whole keys and 1 of 20000 20-character fragments (a fragment with
    # no capital or no lower-case letter: odds about 1 in 15000).
    assert missed_keys == 0
    assert missed_fragments <= 3


def test_existing_files_with_key_like_names_are_used(write_config: Write, site_dir: Path) -> None:
    # Three character classes and no extension: looks like a key, but the file exists.
    odd = site_dir / "keys/alpha/Wg2Key/alpha2private"
    odd.parent.mkdir()
    odd.write_bytes((site_dir / "keys/alpha/wireguard.key").read_bytes())
    odd.chmod(0o600)
    assert looks_like_key("keys/alpha/Wg2Key/alpha2private")
    text = BASE.replace("keys/alpha/wireguard.key", "keys/alpha/Wg2Key/alpha2private")
    wg = load_config(write_config(text)).tunnels[0].wireguard
    assert wg is not None and wg.private_key is not None and wg.private_key.path == odd
