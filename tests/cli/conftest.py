from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.config.sitefiles import make_site_dir

_counter = itertools.count()


@pytest.fixture(scope="session")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared key files and PKI; tests write their config files next to them, never edit them."""
    return make_site_dir(tmp_path_factory.mktemp("site"))


@pytest.fixture
def write_config(site_dir: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = site_dir / f"config-{next(_counter)}.yaml"
        path.write_text(text)
        return path

    return write
