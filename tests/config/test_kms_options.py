"""kms[].skip.remote_system_ids (SKIP's name for the far end) and kms[].low_stock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]
ETSI = "    kind: etsi014\n"
SKIP = "    kind: skip\n"
GAMMA = """\
  - name: gamma
    sae_id: sae-gamma
    address: 198.51.100.3
    public_keys:
      ed25519: {file: keys/beta/ed25519.pub}
      mldsa65: {file: keys/beta/mldsa65.pub}
"""


def _with_gamma(text: str) -> str:
    return text.replace("tunnels:\n", GAMMA + "tunnels:\n")


def errors(write_config: Write, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    return str(err.value).splitlines()


def test_skip_maps_listed_peers_and_defaults_to_the_sae_id(write_config: Write) -> None:
    text = _with_gamma(BASE.replace(
        SKIP.replace("skip", "etsi014"),
        SKIP + "    skip:\n      remote_system_ids:\n        sae-beta: router-2.example\n"))
    kms = load_config(write_config(text)).kms[0]
    assert kms.skip is not None and kms.skip.remote_system_ids == {"sae-beta": "router-2.example"}
    assert kms.remote_system_id("sae-beta") == "router-2.example"
    assert kms.remote_system_id("sae-gamma") == "sae-gamma"


def test_skip_without_block_maps_every_peer_to_itself(write_config: Write) -> None:
    kms = load_config(write_config(BASE.replace(ETSI, SKIP))).kms[0]
    assert kms.skip is None
    assert kms.remote_system_id("sae-beta") == "sae-beta"


def test_skip_block_only_with_kind_skip(write_config: Write) -> None:
    text = BASE.replace(ETSI, ETSI + "    skip: {remote_system_ids: {sae-beta: rs-2}}\n")
    assert errors(write_config, text) == [
        "kms[0].skip (line 10): a skip: block does not belong in a KMS of kind etsi014; "
        "remove it, or set kind: skip"]
    kms = load_config(write_config(BASE)).kms[0]
    assert kms.remote_system_id("sae-beta") == "sae-beta"


def test_skip_mapping_names_a_known_peer_and_a_valid_id(write_config: Write) -> None:
    text = _with_gamma(BASE.replace(
        ETSI, SKIP + "    skip:\n      remote_system_ids:\n        sae-bta: rs-2\n"
        "        sae-gamma: 'has space'\n        sae-beta: ''\n      extra: 1\n"))
    assert errors(write_config, text) == [
        "kms[0].skip.remote_system_ids.sae-bta (line 12): no peer has SAE ID 'sae-bta'; peers' "
        "SAE IDs: sae-beta, sae-gamma",
        "kms[0].skip.remote_system_ids.sae-gamma (line 13): 'has space' is not a SKIP remote "
        "system ID; use 1-128 printable characters without spaces, as the KMS names it",
        "kms[0].skip.remote_system_ids.sae-beta (line 14): '' is not a SKIP remote system ID; "
        "use 1-128 printable characters without spaces, as the KMS names it",
        "kms[0].skip.extra (line 15): unknown key 'extra'; allowed here: remote_system_ids",
    ]


def test_low_stock_defaults_to_pool_low_water(write_config: Write) -> None:
    assert load_config(write_config(BASE)).kms[0].low_stock == 16
    pool = BASE.replace(ETSI, ETSI + "    pool: {target: 32, low_water: 4}\n")
    assert load_config(write_config(pool)).kms[0].low_stock == 4
    both = pool.replace(ETSI, ETSI + "    low_stock: 100\n")
    assert load_config(write_config(both)).kms[0].low_stock == 100
    off = BASE.replace(ETSI, ETSI + "    low_stock: 0\n")
    assert load_config(write_config(off)).kms[0].low_stock == 0


@pytest.mark.parametrize(("value", "expected"), [
    ("-1", "kms[0].low_stock (line 10): '-1' is too small; write a number at least 0"),
    ("no", "kms[0].low_stock (line 10): 'no' is not a whole number; write e.g. 64"),
    ("lots", "kms[0].low_stock (line 10): 'lots' is not a whole number; write e.g. 64"),
])
def test_low_stock_must_be_a_count(write_config: Write, value: str, expected: str) -> None:
    assert errors(write_config, BASE.replace(ETSI, ETSI + f"    low_stock: {value}\n")) == [
        expected]


def test_invalid_low_water_is_reported_once_not_copied(write_config: Write) -> None:
    text = BASE.replace(ETSI, ETSI + "    pool: {low_water: -1}\n")
    assert errors(write_config, text) == [
        "kms[0].pool.low_water (line 10): '-1' is too small; write a number at least 0"]
