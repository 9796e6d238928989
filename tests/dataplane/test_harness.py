"""The namespace harness itself (others reuse it for end-to-end tests)."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.netns_harness import NetnsLab

pytestmark = pytest.mark.netns


def test_lab_builds_and_tears_down_everything() -> None:
    with NetnsLab() as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        va, vb = lab.veth(a, "192.168.70.1/24", b, "192.168.70.2/24")
        assert a.ping("192.168.70.2", count=1) == 0
        names = a.call(lambda: [n for _, n in socket.if_nameindex()])
        assert va in names and vb not in names
        assert "lo" in b.call(lambda: [n for _, n in socket.if_nameindex()])
        assert len(lab.ifname("wgsomething-long")) <= 15
        created = [ns.name for ns in lab.namespaces]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in created)


def test_teardown_happens_on_failure() -> None:
    lab = NetnsLab()
    with pytest.raises(RuntimeError), lab:
        lab.namespace("x")
        raise RuntimeError("test body failed")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"-x-{lab.suffix}" not in listed
