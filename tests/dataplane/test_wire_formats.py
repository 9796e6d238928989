"""UAPI text and WireGuard generic netlink messages, built and parsed without a device."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from pyroute2 import AsyncWireGuard
from pyroute2.netlink.generic.wireguard import WGPEER_F_REMOVE_ME, wgmsg

from gateway.dataplane.netlink_wg import parse_device, peer_request, recreate_peer_attrs
from gateway.dataplane.reconcile import DevicePlan, PeerChange, normalize_spec
from gateway.dataplane.types import PeerState, PeerStatus, WgInterfaceSpec, WgPeerSpec
from gateway.dataplane.uapi import parse_get, plan_to_uapi, recreate_peer
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit

PRIV, PSK = os.urandom(32), os.urandom(32)
PUB1, PUB2 = os.urandom(32), os.urandom(32)
B1, B2 = base64.b64encode(PUB1).decode(), base64.b64encode(PUB2).decode()


def test_parse_uapi_get() -> None:
    answer = [
        f"private_key={PRIV.hex()}", "listen_port=51820",
        f"public_key={PUB1.hex()}", f"preshared_key={PSK.hex()}", "protocol_version=1",
        "endpoint=192.0.2.1:51821", "last_handshake_time_sec=1700000000",
        "last_handshake_time_nsec=500000000", "tx_bytes=10", "rx_bytes=20",
        "persistent_keepalive_interval=25", "allowed_ip=10.0.0.2/32", "allowed_ip=10.1.0.9/16",
        f"public_key={PUB2.hex()}", f"preshared_key={'0' * 64}", "last_handshake_time_sec=0",
        "last_handshake_time_nsec=0", "tx_bytes=0", "rx_bytes=0",
        "persistent_keepalive_interval=0", "errno=0",
    ]
    state = parse_get(answer)
    assert state.private_key == Secret(PRIV) and state.listen_port == 51820
    p1, p2 = state.peers[B1], state.peers[B2]
    assert p1.preshared_key == Secret(PSK) and p2.preshared_key is None
    assert p1.allowed_ips == {"10.0.0.2/32", "10.1.0.0/16"} and p2.allowed_ips == set()
    assert p1.persistent_keepalive == 25 and p2.persistent_keepalive is None
    assert p1.status == PeerStatus(B1, 1700000000.5, 20, 10, "192.0.2.1:51821")
    assert p2.status.last_handshake is None and p2.endpoint is None


def test_plan_to_uapi_writes_hex_and_no_psk() -> None:
    spec = normalize_spec(WgInterfaceSpec(
        "wg0", Secret(PRIV), 51820, peers=(WgPeerSpec(B1, "[fd00::1]:5", ("10.0.0.2/32",), 25),)))
    body = plan_to_uapi(DevicePlan(
        private_key=Secret(PRIV), listen_port=51820, remove_peers=(B2,),
        peer_changes=(PeerChange(spec.peers[0], create=True),)))
    assert body == (
        f"private_key={PRIV.hex()}\nlisten_port=51820\n"
        f"public_key={PUB2.hex()}\nremove=true\n"
        f"public_key={PUB1.hex()}\nendpoint=[fd00::1]:5\npersistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\nallowed_ip=10.0.0.2/32\n"
    )
    update = plan_to_uapi(DevicePlan(peer_changes=(PeerChange(spec.peers[0], keepalive=True),)))
    assert update == f"public_key={PUB1.hex()}\nupdate_only=true\npersistent_keepalive_interval=25\n"
    assert plan_to_uapi(DevicePlan()) == ""


def peer_state(psk: bytes | None) -> PeerState:
    return PeerState(B1, Secret(psk) if psk else None, "192.0.2.1:51821",
                     frozenset({"10.0.0.2/32"}), 25, PeerStatus(B1, None, 0, 0, None))


def test_uapi_recreate_keeps_every_field() -> None:
    assert recreate_peer(peer_state(PSK)) == (
        f"public_key={PUB1.hex()}\nremove=true\npublic_key={PUB1.hex()}\n"
        f"preshared_key={PSK.hex()}\nendpoint=192.0.2.1:51821\n"
        "persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.2/32\n"
    )


def encode_device(peers: list[Any]) -> wgmsg:
    """A device message as the kernel would send it, round-tripped through bytes."""
    msg = wgmsg()
    msg["cmd"], msg["version"] = 0, 1
    msg["attrs"].append(["WGDEVICE_A_IFNAME", "wg0"])
    msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", base64.b64encode(PRIV).decode()])
    msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", 51820])
    msg["attrs"].append(["WGDEVICE_A_PEERS", peers])
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


def sock() -> AsyncWireGuard:
    return AsyncWireGuard.__new__(AsyncWireGuard)  # only its pure encoders are used


def test_netlink_device_parse_merges_split_peers() -> None:
    s = sock()
    first = recreate_peer_attrs(s, peer_state(PSK))[1:]  # the "add" half: full peer
    cont = [{"attrs": [["WGPEER_A_PUBLIC_KEY", B1],
                       ["WGPEER_A_ALLOWEDIPS",
                        s._wg_build_allowedips(["fd00::/64"])]]}]  # continued in message 2
    other = [{"attrs": [["WGPEER_A_PUBLIC_KEY", B2],
                        ["WGPEER_A_PRESHARED_KEY", base64.b64encode(bytes(32)).decode()]]}]
    state = parse_device([encode_device(first), encode_device(cont + other)])
    assert state.private_key == Secret(PRIV) and state.listen_port == 51820
    p1 = state.peers[B1]
    assert p1.preshared_key == Secret(PSK) and p1.endpoint == "192.0.2.1:51821"
    assert p1.allowed_ips == {"10.0.0.2/32", "fd00::/64"} and p1.persistent_keepalive == 25
    assert state.peers[B2].preshared_key is None and state.peers[B2].endpoint is None


def test_netlink_device_parse_reads_every_field_and_one_peer_alone() -> None:
    s = sock()
    v4 = recreate_peer_attrs(s, peer_state(PSK))[1:]
    v4[0]["attrs"] += [["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000,
                                                          "tv_nsec": 250000000}],
                       ["WGPEER_A_RX_BYTES", 20], ["WGPEER_A_TX_BYTES", 10]]
    v6 = [{"attrs": [["WGPEER_A_PUBLIC_KEY", B2],
                     ["WGPEER_A_ENDPOINT", {"addr": "fd00::1", "port": 5}],
                     ["WGPEER_A_ALLOWEDIPS", s._wg_build_allowedips(["10.9.0.0/16"])]]}]
    msg = encode_device(v4 + v6)
    state = parse_device([msg])
    p1, p2 = state.peers[B1], state.peers[B2]
    assert p1.status == PeerStatus(B1, 1700000000.25, 20, 10, "192.0.2.1:51821")
    assert p1.persistent_keepalive == 25 and p1.allowed_ips == {"10.0.0.2/32"}
    assert p2.endpoint == "[fd00::1]:5" and p2.allowed_ips == {"10.9.0.0/16"}
    assert p2.preshared_key is None and p2.status.last_handshake is None
    assert parse_device([msg], only=B2).peers == {B2: p2}
    assert parse_device([msg], only=base64.b64encode(os.urandom(32)).decode()).peers == {}


@pytest.mark.parametrize(("kind", "length", "error"), [
    (8, None, "malformed netlink attribute"),  # WGDEVICE_A_PEERS runs past the message
    (6, 5, "too short"),  # WGDEVICE_A_LISTEN_PORT with a 1-byte payload
])
def test_netlink_device_parse_refuses_a_cut_attribute(kind: int, length: int | None,
                                                      error: str) -> None:
    data = bytearray(encode_device(recreate_peer_attrs(sock(), peer_state(PSK))[1:]).data)
    off = 20  # netlink and generic netlink headers, then the device's attributes
    while int.from_bytes(data[off + 2:off + 4], "little") & 0x3FFF != kind:
        off += (int.from_bytes(data[off:off + 2], "little") + 3) & ~3
    data[off:off + 2] = (length or len(data) - off + 4).to_bytes(2, "little")
    broken = wgmsg(data)
    broken.decode()
    with pytest.raises(ValueError, match=error):
        parse_device([broken])


def test_netlink_recreate_is_one_message_remove_then_add() -> None:
    attrs = recreate_peer_attrs(sock(), peer_state(None))
    msg = encode_device(attrs)
    removed, added = msg.get_attr("WGDEVICE_A_PEERS")
    assert removed.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME
    assert added.get_attr("WGPEER_A_FLAGS") == 0
    assert added.get_attr("WGPEER_A_PUBLIC_KEY").decode() == B1
    assert added.get_attr("WGPEER_A_PRESHARED_KEY") is None


def test_netlink_peer_request() -> None:
    spec = WgPeerSpec(B1, "[fd00::1]:5", ("10.0.0.2/32",), None)
    assert peer_request(PeerChange(spec, create=True)) == {
        "public_key": B1, "endpoint_addr": "fd00::1", "endpoint_port": 5,
        "persistent_keepalive": 0, "replace_allowed_ips": True, "allowed_ips": ["10.0.0.2/32"],
    }
    assert peer_request(PeerChange(spec, endpoint=True)) == {
        "public_key": B1, "update_only": True, "endpoint_addr": "fd00::1", "endpoint_port": 5,
    }
