"""The vm tier runs only inside the kernel lab (scripts/kernel_lab.sh sets QKD_KERNEL_LAB=1 in
the guest after loading wireguard and the ESP/XFRM modules; if a module fails to load the guest
runs nothing and the lab reports FAIL); anywhere else it skips with the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if os.environ.get("QKD_KERNEL_LAB") != "1":
        reason = "runs only inside the kernel lab VM: `make test-vm` (scripts/kernel_lab.sh)"
    elif not Path("/sys/module/wireguard").exists():
        reason = "kernel lab guest has no wireguard module loaded (modprobe wireguard failed?)"
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)
