"""Messages quote a value as the operator typed it (`yes`, not `True`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]
KMS_LINE = "    kme_id: kme-a\n"
TUNNEL_LINE = "    kms: [kms-a]\n"


def problems(write_config: Write, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    return str(err.value).splitlines()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(TUNNEL_LINE, TUNNEL_LINE + "    rekey_interval: yes\n",
                     "tunnels[0].rekey_interval (line 28): 'yes' is not a duration; write e.g. "
                     "120s or 5m", id="duration-yes"),
        pytest.param(TUNNEL_LINE, TUNNEL_LINE + "    reject_after: Off\n",
                     "tunnels[0].reject_after (line 28): 'Off' is not a duration; write e.g. "
                     "120s or 5m", id="duration-off"),
        pytest.param("site:\n", "listen: {port: on}\nsite:\n",
                     "listen.port (line 1): 'on' is not a port number; write a number from 1 "
                     "to 65535", id="port-on"),
        pytest.param(KMS_LINE, KMS_LINE + "    pool: {target: yes}\n",
                     "kms[0].pool.target (line 12): 'yes' is not a whole number; write e.g. 64",
                     id="count-yes"),
    ],
)
def test_messages_quote_the_text_as_written(
    write_config: Write, old: str, new: str, expected: str
) -> None:
    assert old in BASE
    assert problems(write_config, BASE.replace(old, new)) == [expected]


def test_names_keep_their_spelling(write_config: Write) -> None:
    # YAML 1.1 reads 0123 as octal 83 and 1_000 as 1000; as a name the operator meant the text.
    text = (BASE.replace("sae_id: sae-alpha", "sae_id: 0123")
            .replace("  - name: beta\n    sae_id: sae-beta\n", "  - name: 1_000\n    sae_id: 0x10\n")
            .replace("peer: beta", "peer: 1_000")
            .replace("site:\n", "listen: {port: 0x1F90}\nsite:\n"))
    config = load_config(write_config(text))
    assert (config.site.sae_id, config.peers[0].name, config.peers[0].sae_id) == (
        "0123", "1_000", "0x10")
    assert config.listen.port == 8080 and type(config.listen.port) is int
    assert config.tunnels[0].peer == "1_000"


def test_numeric_names_take_part_in_cross_checks(write_config: Write) -> None:
    text = (BASE.replace("  - name: beta\n", "  - name: 0123\n")
            .replace("peer: beta", "peer: '0123'")
            .replace("kms: [kms-a]", "kms: [kms-a, kms-a]")
            .replace("sae_id: sae-beta", "sae_id: 007"))
    text = text.replace("  sae_id: sae-alpha\n", "  sae_id: 7\n")
    assert problems(write_config, text) == [
        "tunnels[0].kms[1] (line 27): KMS 'kms-a' is listed twice; list each KMS once"]
    text = text.replace("  sae_id: 7\n", "  sae_id: '007'\n")
    assert problems(write_config, text) == [
        "peers[0].sae_id (line 17): '007' is this site's own SAE ID; write the peer's SAE ID "
        "here",
        "tunnels[0].kms[1] (line 27): KMS 'kms-a' is listed twice; list each KMS once"]
