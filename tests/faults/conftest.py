import shutil

import pytest

# Real processes, namespaces, packets: root, iproute2, wireguard-go (or kernel WireGuard),
# nftables, libfaketime, tcpdump, nsenter; mosquitto for the MQTT scenario.
pytestmark = pytest.mark.netns


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [t for t in ("ip", "wg", "nft", "faketime", "tcpdump", "nsenter") if shutil.which(t) is None]
    if missing:
        skip = pytest.mark.skip(reason=f"needs {', '.join(missing)}: run `make setup` "
                                       "(Debian: nftables, faketime, tcpdump)")
        for item in items:
            if "tests/faults" in str(item.fspath):
                item.add_marker(skip)
