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
