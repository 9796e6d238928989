"""Suite-wide settings. Area fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tiers that need root (namespaces, interfaces) skip with a reason instead of failing when the
    # suite is run unprivileged; CI and `make test` run as root, so there they always run.
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); run `make test` as root")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
