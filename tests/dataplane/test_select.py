"""Backend selection and the generic netlink probe (real netlink socket, no privileges)."""

from __future__ import annotations

import shutil

import pytest

from gateway.dataplane import (
    BackendUnavailable,
    KernelBackend,
    UserspaceBackend,
    WireGuardBackend,
    kernel_wireguard_available,
    select_backend,
)
from gateway.dataplane.select import _genl_family_exists

pytestmark = pytest.mark.unit


def test_genl_probe_tells_families_apart() -> None:
    assert _genl_family_exists("nlctrl")  # the controller itself always exists
    assert not _genl_family_exists("qkdgw-no-such-family")


def test_kernel_preference_follows_the_probe() -> None:
    if kernel_wireguard_available():
        assert isinstance(select_backend("kernel"), KernelBackend)
        assert select_backend("auto").kind == "kernel"
    else:
        with pytest.raises(BackendUnavailable, match="modprobe wireguard"):
            select_backend("kernel")


@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go not installed")
def test_userspace_and_protocol() -> None:
    backend = select_backend("userspace", netns="somewhere")
    assert isinstance(backend, UserspaceBackend) and backend.netns == "somewhere"
    assert isinstance(backend, WireGuardBackend) and backend.kind == "userspace"
    assert isinstance(KernelBackend(), WireGuardBackend)


def test_missing_wireguard_go_says_how_to_install() -> None:
    with pytest.raises(BackendUnavailable, match="apt-get install wireguard-go"):
        select_backend("userspace", wireguard_go="qkdgw-no-such-binary")


def test_unknown_preference() -> None:
    with pytest.raises(ValueError, match="auto, kernel or userspace"):
        select_backend("fastest")  # type: ignore[arg-type]
