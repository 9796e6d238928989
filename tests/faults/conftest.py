import shutil

import pytest

# Real processes, namespaces, packets: root, iproute2, wireguard-go (or kernel WireGuard),
# nftables, tc, libfaketime, mosquitto (each test names what it needs).
pytestmark = pytest.mark.netns


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [t for t in ("ip", "wg", "nft", "tc", "faketime") if shutil.which(t) is None]
    if missing:
        skip = pytest.mark.skip(reason=f"needs {', '.join(missing)}: run `make setup` "
                                       "(Debian: nftables, iproute2, faketime)")
        for item in items:
            if "tests/faults" in str(item.fspath):
                item.add_marker(skip)
