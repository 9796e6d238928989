"""The overlap check of cross_check (O(n log n) sweep) against the pairwise definition."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from gateway.config.crosscheck import cross_check
from gateway.config.loader import Document

pytestmark = pytest.mark.unit


def _doc(tunnels: list[list[str]]) -> Document:
    data: dict[str, Any] = {"tunnels": [
        {"name": f"t{i}", "wireguard": {"allowed_ips": nets[: len(nets) // 2 + 1]},
         "xfrm": {"remote_subnets": nets[len(nets) // 2 + 1:]}}
        for i, nets in enumerate(tunnels)]}
    return Document(data)


def _pairwise(tunnels: list[list[str]]) -> list[str]:
    """The definition (the former quadratic check): each network against every earlier one of
    another tunnel; the first overlapping one in file order is named."""
    out: list[str] = []
    owners: list[tuple[Any, str, int]] = []
    for i, nets in enumerate(tunnels):
        split = len(nets) // 2 + 1
        for j, text in enumerate(nets):
            block, key, k = (("wireguard", "allowed_ips", j) if j < split
                             else ("xfrm", "remote_subnets", j - split))
            net = ipaddress.ip_network(text, strict=False)
            path = f"tunnels[{i}].{block}.{key}[{k}]"
            for other, other_path, ti in owners:
                if ti != i and other.version == net.version and net.overlaps(other):
                    out.append(f"{path}: {net} overlaps {other} of {other_path} (tunnel t{ti})")
                    break
            owners.append((net, path, i))
    return out


def _random_net(rng: random.Random) -> str:
    if rng.random() < 0.2:
        plen = rng.choice([0, 16, 120, 124, 128])
        addr = ipaddress.IPv6Address(rng.getrandbits(128) & ~((1 << 124) - 1) | rng.getrandbits(4))
        return str(ipaddress.IPv6Network((addr, plen), strict=False))
    plen = rng.choice([8, 16, 24, 28, 30, 32, 32, 32])
    addr = ipaddress.IPv4Address(0x0A000000 | rng.getrandbits(5) << 3 | rng.getrandbits(3))
    return str(ipaddress.IPv4Network((addr, plen), strict=False))


@pytest.mark.parametrize("seed", range(40))
def test_sweep_matches_pairwise_definition(seed: int) -> None:
    rng = random.Random(seed)
    tunnels = [[_random_net(rng) for _ in range(rng.randint(1, 4))]
               for _ in range(rng.randint(1, 25))]
    got = [f"{p.path}: {p.message}" for p in cross_check(_doc(tunnels))]
    assert got == _pairwise(tunnels)


def test_ten_thousand_disjoint_networks_and_one_overlap() -> None:
    tunnels = [[f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32"] for i in range(10_000)]
    tunnels.append(["10.64.0.0/16"])
    problems = cross_check(_doc(tunnels))
    assert [p.path for p in problems] == ["tunnels[10000].wireguard.allowed_ips[0]"]
    assert "overlaps 10.64.0.0/32 of tunnels[0].wireguard.allowed_ips[0] (tunnel t0)" \
        in problems[0].message
