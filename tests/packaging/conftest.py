"""Package tests: the .deb (make deb) and apt hygiene."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.debfile import deb_under_test


@pytest.fixture(scope="session")
def deb() -> Path:
    return deb_under_test()
