"""`qkd-gateway check-config FILE`: a summary and exit 0, or every problem and exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.kms.sim.pki import ensure_pki
from tests.config.sitefiles import BASE, assert_no_secrets, run_cli

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]


def test_valid_file_prints_summary(
    write_config: Write, site_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(BASE + "    rekey_interval: 90s\n    reject_after: 150s\n")
    assert run_cli("check-config", str(path)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"{path}: OK"
    assert lines[1] == ("  site alpha: SAE sae-alpha, peer protocol on 0.0.0.0:7447, state in "
                        "/var/lib/qkd-gateway")
    assert lines[2] == ("  kms kms-a: etsi014 https://127.0.0.1:8443 KME kme-a, pool 64 "
                        "(batch 8, refill below 16), rekeys slow down below 16 stored keys")
    assert lines[3].startswith("  peer beta: SAE sae-beta at 198.51.100.2:7447, identity ")
    assert lines[4] == ("  tunnel t0: wireguard on wg-beta to beta, policy qkd+pqc, kms kms-a, "
                        "rekey 1m30s, reject after 2m30s, on shutdown keep, backend auto")
    assert lines[5] == "  telemetry: log auto/info"
    assert_no_secrets(out, [site_dir])
    assert run_cli("check-config", "--quiet", str(path)) == 0
    assert capsys.readouterr() == ("", "")


def test_invalid_file_lists_problems_on_stderr_exit_2(
    write_config: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE.replace("    peer: beta\n", "    peer: bet\n") + "    rekey_interval: 5x\n"
    path = write_config(text)
    assert run_cli("check-config", str(path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{path}: 2 problems\n"
        "  tunnels[0].peer (line 26): no peer named 'bet'; defined peers: beta\n"
        "  tunnels[0].rekey_interval (line 32): '5x' is not a duration; write e.g. 120s or 5m\n"
    )
    assert "Traceback" not in err


def test_missing_and_unparsable_files(
    write_config: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("check-config", str(tmp_path / "nope.yaml")) == 2
    assert capsys.readouterr().err == (
        f"{tmp_path}/nope.yaml: 1 problem\n  file: configuration file {tmp_path}/nope.yaml does "
        "not exist; check the path, or start from an example in configs/\n")
    path = write_config("site: {name: x\n")
    assert run_cli("check-config", str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: 1 problem\n  line 2, column 1: YAML syntax error: ")


def test_missing_key_file_is_an_error(
    write_config: Write, site_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(BASE.replace("keys/alpha/mldsa65.key", "keys/alpha/gone.key"))
    assert run_cli("check-config", str(path)) == 2
    assert capsys.readouterr().err.splitlines()[1] == (
        f"  site.identity.mldsa65_key.file (line 6): file {site_dir}/keys/alpha/gone.key does "
        "not exist; write it with `qkd-gateway keygen` (add --wireguard for a WireGuard key), or "
        "fix the path (relative paths start at this file's folder)")


def test_key_files_that_do_not_parse_or_match(
    write_config: Write, site_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_pki(site_dir / "pki", saes=["sae-other"])
    text = (BASE.replace("ed25519_key: {file: keys/alpha/ed25519.key}",
                         "ed25519_key: {file: keys/alpha/mldsa65.key}")
            .replace("private_key: {file: keys/alpha/wireguard.key}",
                     "private_key: {file: keys/alpha/ed25519.key}")
            .replace("client_key: {file: pki/sae-alpha.key}", "client_key: {file: pki/sae-other.key}"))
    path = write_config(text)
    assert run_cli("check-config", str(path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    keys = site_dir / "keys/alpha"
    lines = err.splitlines()
    assert lines[0] == f"{path}: 3 problems"
    # The identity module words its own message; only where it is reported is ours.
    assert lines[1].startswith(f"  site.identity (line 4): {keys}/mldsa65.key ")
    assert lines[1].endswith("; write new keys with `qkd-gateway keygen`")
    assert lines[2:] == [
        f"  kms[0].client_key (line 14): {site_dir}/pki/sae-other.key does not belong to the "
        f"certificate {site_dir}/pki/sae-alpha.crt; use the certificate and key issued together",
        f"  tunnels[0].wireguard.private_key (line 29): {keys}/ed25519.key is not a WireGuard "
        "private key (base64 of 32 bytes); write one with `wg genkey` or "
        "`qkd-gateway keygen --wireguard`",
    ]
    assert_no_secrets(err, [site_dir])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("a: &x [*x]\n",
                     "a[0] (line 1, column 8): alias *x refers to the list or mapping that "
                     "contains it; write the values out instead", id="self-alias"),
        pytest.param("site: !!int abc\n",
                     "site (line 1, column 7): cannot be read as a whole number (!!int); put it "
                     "in quotes and remove any !! tag", id="int"),
        pytest.param("site: !!float abc\n",
                     "site (line 1, column 7): cannot be read as a number (!!float); put it in "
                     "quotes and remove any !! tag", id="float"),
        pytest.param("site: !!timestamp abc\n",
                     "site (line 1, column 7): cannot be read as a date (!!timestamp); put it in "
                     "quotes and remove any !! tag", id="timestamp"),
        pytest.param("a: !!python/object/apply:os.system ['true']\n",
                     "a (line 1, column 4): unsupported YAML tag !!python/object/apply:os.system; "
                     "remove the tag and write plain text, numbers, lists or mappings",
                     id="tag-on-list"),
    ],
)
def test_hostile_one_liners_exit_2_without_traceback(
    write_config: Write, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    path = write_config(text)
    assert run_cli("check-config", str(path)) == 2
    assert capsys.readouterr() == ("", f"{path}: 1 problem\n  {problem}\n")


def test_summary_shows_skip_remote_systems_and_low_stock(
    write_config: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE.replace("    kind: etsi014\n", "    kind: skip\n    low_stock: 0\n    skip:\n"
                        "      remote_system_ids: {sae-beta: router-2}\n")
    assert run_cli("check-config", str(write_config(text))) == 0
    assert capsys.readouterr().out.splitlines()[2] == (
        "  kms kms-a: skip https://127.0.0.1:8443 KME kme-a, pool 64 (batch 8, refill below 16), "
        "rekeys never slow down, remote systems sae-beta=router-2")
