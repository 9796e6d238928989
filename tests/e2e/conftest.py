import shutil

import pytest

# Real processes, packets and WireGuard: root, iproute2 and wireguard-go (or kernel WireGuard).
pytestmark = pytest.mark.netns


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [t for t in ("ip", "wg") if shutil.which(t) is None]
    if missing:
        skip = pytest.mark.skip(reason=f"needs {', '.join(missing)}: run `make setup`")
        for item in items:
            if "tests/e2e" in str(item.fspath):
                item.add_marker(skip)
