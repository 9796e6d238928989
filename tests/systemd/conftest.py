"""The real-systemd tier: a Debian 12 root booted by systemd-nspawn (make test-systemd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.debfile import deb_under_test


def pytest_configure(config: pytest.Config) -> None:
    # Also requested for pyproject's marker list; registered here so --strict-markers accepts it.
    config.addinivalue_line(
        "markers", "systemd: boots a Debian 12 root under systemd-nspawn (make test-systemd)")


@pytest.fixture(scope="session")
def deb() -> Path:
    return deb_under_test()
