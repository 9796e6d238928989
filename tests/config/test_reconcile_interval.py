"""daemon.reconcile_interval: how often the daemon restores drift (issue 13). Bounded, with an
error that names the range and its reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.config.sitefiles import BASE

pytestmark = pytest.mark.unit

Write = Callable[[str], Path]
DAEMON = "daemon:\n  reconcile_interval: {}\n"


def test_default_is_30_seconds(write_config: Write) -> None:
    assert load_config(write_config(BASE)).daemon.reconcile_interval == 30.0


@pytest.mark.parametrize(("value", "seconds"), [("1s", 1.0), ("2.5s", 2.5), ("5m", 300.0),
                                                ("1h", 3600.0), ("45", 45.0)])
def test_in_range_loads(write_config: Write, value: str, seconds: float) -> None:
    cfg = load_config(write_config(BASE + DAEMON.format(value)))
    assert cfg.daemon.reconcile_interval == seconds


@pytest.mark.parametrize(("value", "shown"), [("0", "0s"), ("500ms", "500ms"), ("2h", "2h")])
def test_out_of_range_is_refused_with_the_range(write_config: Write, value: str,
                                                shown: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(BASE + DAEMON.format(value)))
    line = BASE.count("\n") + 2
    assert str(err.value).splitlines() == [
        f"daemon.reconcile_interval (line {line}): {shown} is outside 1s to 1h (each pass dumps "
        "every interface; drift must not last longer); write e.g. 30s"]


def test_unknown_key_in_the_section_is_refused(write_config: Write) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(BASE + "daemon:\n  reconcile: 5s\n"))
    assert "daemon.reconcile" in str(err.value)
