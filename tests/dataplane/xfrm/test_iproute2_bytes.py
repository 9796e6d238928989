"""Our XFRM messages against what `ip xfrm` (iproute2 6.1) sends and the kernel (Debian 6.1)
answers, captured once in the kernel lab (capture_fixtures.py) and kept in fixtures/."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink import nlmsg

from gateway.dataplane.xfrm import client
from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.codec import (
    allocspi_request,
    parse_acquire,
    parse_expire,
    parse_policy,
    parse_sa,
    policy_id_request,
    policy_request,
    sa_id_request,
    sa_request,
)
from gateway.dataplane.xfrm.errors import (
    XfrmExists,
    XfrmKernelError,
    XfrmNotFound,
    XfrmUnavailable,
    kernel_error,
)
from gateway.dataplane.xfrm.messages import (
    TMPL_SIZE,
    xfrm_user_acquire,
    xfrm_user_expire,
    xfrm_userpolicy_id,
    xfrm_userpolicy_info,
    xfrm_usersa_id,
    xfrm_usersa_info,
    xfrm_userspi_info,
)
from gateway.dataplane.xfrm.model import (
    Lifetime,
    Mark,
    PolicyParams,
    SaParams,
    Selector,
    Template,
)
from gateway.dataplane.xfrm.transport import parse_datagram
from gateway.keymaterial import Secret

pytestmark = pytest.mark.unit

FIX = json.loads((Path(__file__).parent / "fixtures" / "iproute2.json").read_text())
KEY = Secret(bytes.fromhex(FIX["key_hex"]))
REQID = 0x51D00001
A4, B4 = ip_address("192.0.2.1"), ip_address("192.0.2.2")
A6, B6 = ip_address("2001:db8::1"), ip_address("2001:db8::2")
OUT4 = Selector(ip_network("10.1.0.0/24"), ip_network("10.2.0.0/24"))


def payload(msg: nlmsg) -> str:
    msg["header"].update(type=0, flags=0, sequence_number=0, pid=0)
    msg.encode()
    return bytes(msg.data)[16:].hex()


@pytest.mark.parametrize(("cls", "size"), [
    (xfrm_usersa_info, 224), (xfrm_usersa_id, 24), (xfrm_userspi_info, 232),
    (xfrm_userpolicy_info, 168), (xfrm_userpolicy_id, 64), (xfrm_user_expire, 232),
    (xfrm_user_acquire, 280)])
def test_structures_have_the_uapi_sizes(cls: Any, size: int) -> None:
    msg = cls()
    for name, fmt in cls.fields:
        msg[name] = b"" if fmt.endswith("s") else 0
    assert len(bytes.fromhex(payload(msg))) == size
    assert TMPL_SIZE == 64


BUILDERS: dict[str, Callable[[], nlmsg]] = {
    "newsa_v4": lambda: sa_request(SaParams(A4, B4, 0x1000, REQID, KEY, 128, esn=True)),
    "updsa_v4": lambda: sa_request(SaParams(A4, B4, 0x1000, REQID, KEY, 128, esn=True)),
    "newsa_v6_full": lambda: sa_request(SaParams(
        A6, B6, 0x2000, REQID, KEY, 64, esn=False, mark=Mark(0x10, 0xFF), if_id=7,
        lifetime=Lifetime(60, 120, 1_000_000, 2_000_000, 1000, 2000))),
    "getsa_v4": lambda: sa_id_request(B4, 0x1000, src=A4),
    "delsa_v4": lambda: sa_id_request(B4, 0x1000, src=A4),
    "allocspi_v4": lambda: allocspi_request(B4, A4, REQID),
    "newpolicy_v4": lambda: policy_request(PolicyParams(
        OUT4, c.Direction.OUT, (Template(A4, B4, REQID),))),
    "updpolicy_v6_ifid": lambda: policy_request(PolicyParams(
        Selector.any(c.AF_INET6), c.Direction.FWD, (Template(B6, A6, REQID),),
        mark=Mark(0x10, 0xFF), if_id=7)),
    "getpolicy_v4": lambda: policy_id_request(OUT4, c.Direction.OUT),
    "delpolicy_v4": lambda: policy_id_request(OUT4, c.Direction.OUT),
}
SENT_AS = {  # fixture -> (message type, flags) our client uses for the same operation
    "newsa_v4": (c.XFRM_MSG_NEWSA, client._CHANGE), "updsa_v4": (c.XFRM_MSG_UPDSA, client._CHANGE),
    "newsa_v6_full": (c.XFRM_MSG_NEWSA, client._CHANGE), "getsa_v4": (c.XFRM_MSG_GETSA, client._GET),
    "delsa_v4": (c.XFRM_MSG_DELSA, client._CHANGE),
    "allocspi_v4": (c.XFRM_MSG_ALLOCSPI, client._GET),
    "newpolicy_v4": (c.XFRM_MSG_NEWPOLICY, client._CHANGE),
    "updpolicy_v6_ifid": (c.XFRM_MSG_UPDPOLICY, client._CHANGE),
    "getpolicy_v4": (c.XFRM_MSG_GETPOLICY, client._GET),
    "delpolicy_v4": (c.XFRM_MSG_DELPOLICY, client._CHANGE),
}


@pytest.mark.parametrize("name", sorted(FIX["requests"]))
def test_requests_are_byte_identical_to_ip_xfrm(name: str) -> None:
    captured = FIX["requests"][name]
    assert captured["ip_rc"] == 0, "the kernel accepted iproute2's request when captured"
    assert payload(BUILDERS[name]()) == captured["payload"], " ".join(captured["argv"])
    assert SENT_AS[name] == (captured["type"], captured["flags"])


def messages(datagrams: list[str]) -> list[tuple[int, Any]]:
    out = []
    for hexdata in datagrams:
        out += [(mtype, msg) for mtype, _f, _s, msg, _d in parse_datagram(bytes.fromhex(hexdata))
                if isinstance(msg, nlmsg)]
    return out


def test_sa_dump_decodes_as_ip_xfrm_state_shows_it() -> None:
    text = FIX["ip_state_list"]
    sas = {sa.spi: sa for _t, m in messages(FIX["sa_dump"]) if (sa := parse_sa(m))}
    assert len(sas) == 3 == text.count("\tproto esp spi")
    full = sas[0x1000]
    assert (full.src, full.dst, full.reqid, full.mode) == (A4, B4, REQID, c.XFRM_MODE_TUNNEL)
    assert full.algorithm == "rfc4106(gcm(aes))" == c.AEAD_ALGORITHM
    assert full.key == KEY and full.icv_bits == 128 and len(full.key) * 8 == 288
    assert f"0x{FIX['key_hex']} (288 bits) 128" in text
    assert full.esn and full.replay_window == 128 and "replay_window 128" in text
    assert full.flags & c.XFRM_STATE_AF_UNSPEC and full.selector is None
    assert full.lifetime == Lifetime() and not full.larval and full.mark is None
    v6 = sas[0x2000]
    assert (v6.src, v6.dst, v6.esn, v6.replay_window) == (A6, B6, False, 64)
    assert v6.mark == Mark(0x10, 0xFF) and v6.if_id == 7 and "if_id 0x7" in text
    assert v6.lifetime == Lifetime(60, 120, 1_000_000, 2_000_000, 1000, 2000)
    (larval,) = [sa for spi, sa in sas.items() if spi not in (0x1000, 0x2000)]
    assert larval.larval and larval.key is None and not larval.placeholder
    assert (larval.src, larval.dst, larval.reqid) == (B4, A4, REQID)
    assert larval.lifetime.hard_seconds == c.KERNEL_LARVAL_LIFETIME_DEFAULT
    assert f"spi 0x{larval.spi:08x}" in text and c.SPI_MIN <= larval.spi <= c.SPI_MAX
    assert "(0x51d00001)" in text


def test_policy_dump_decodes_as_ip_xfrm_policy_shows_it() -> None:
    pols = [parse_policy(m) for _t, m in messages(FIX["policy_dump"])]
    by_dir = {p.direction: p for p in pols}
    assert len(pols) == 2 and "dir out priority 50000" in FIX["ip_policy_list"]
    out = by_dir[c.Direction.OUT]
    assert out.params() == PolicyParams(OUT4, c.Direction.OUT, (Template(A4, B4, REQID),))
    assert out.index > 0
    fwd = by_dir[c.Direction.FWD]
    assert fwd.params() == PolicyParams(Selector.any(c.AF_INET6), c.Direction.FWD,
                                        (Template(B6, A6, REQID),), mark=Mark(0x10, 0xFF),
                                        if_id=7)


def test_expire_and_acquire_notifications_decode() -> None:
    events = messages(FIX["notifications"])
    expires = [parse_expire(m) for t, m in events if t == c.XFRM_MSG_EXPIRE]
    acquires = [parse_acquire(m) for t, m in events if t == c.XFRM_MSG_ACQUIRE]
    assert len(expires) == 1 and len(acquires) == 1
    soft = expires[0]
    assert (soft.spi, soft.reqid, soft.hard) == (0x3000, 0x51D00002, False)
    assert (soft.src, soft.dst) == (A4, B4)
    acq = acquires[0]
    assert (acq.reqid, acq.src, acq.dst) == (REQID, A4, B4)
    assert acq.selector is not None
    assert (acq.selector.src, acq.selector.dst) == (ip_network("10.1.0.1/32"),
                                                    ip_network("10.2.0.9/32"))
    assert acq.policy_index > 0


def _error_datagram(seq: int, code: int, text: str | None) -> bytes:
    flags = c.NLM_F_CAPPED | (c.NLM_F_ACK_TLVS if text else 0)
    echoed = struct.pack("=IHHII", 364, c.XFRM_MSG_NEWSA, 5, seq, 0)
    tlv = b""
    if text:
        raw = text.encode() + b"\0"
        tlv = struct.pack("=HH", 4 + len(raw), c.NLMSGERR_ATTR_MSG) + raw
        tlv += bytes(-len(tlv) % 4)
    body = struct.pack("=i", -code) + echoed + tlv
    return struct.pack("=IHHII", 16 + len(body), c.NLMSG_ERROR, flags, seq, 0) + body


def test_error_answers_become_typed_errors_with_the_kernels_reason() -> None:
    data = _error_datagram(7, 38, "Requested AEAD algorithm not found") + _error_datagram(8, 0,
                                                                                          None)
    (t1, _f1, s1, code, detail), (_t2, _f2, s2, ack, _d2) = parse_datagram(data)
    assert (t1, s1, code, detail) == (c.NLMSG_ERROR, 7, 38, "Requested AEAD algorithm not found")
    assert (s2, ack) == (8, 0)
    err = kernel_error("add SA 0x00001000 192.0.2.1 -> 192.0.2.2", code, detail)
    assert isinstance(err, XfrmUnavailable) and err.errno == 38
    assert "ENOSYS (Requested AEAD algorithm not found)" in str(err)
    assert "modprobe esp4 esp6 gcm" in str(err)
    assert isinstance(kernel_error("get SA", 3), XfrmNotFound)
    assert isinstance(kernel_error("add policy", 17), XfrmExists)
    generic = kernel_error("add SA", 22, None)
    assert type(generic) is XfrmKernelError and "EINVAL (Invalid argument)" in str(generic)
    assert "CAP_NET_ADMIN" in str(kernel_error("add SA", 1))


def test_keys_do_not_show_in_reprs_nor_in_expire_notifications() -> None:
    sas = [parse_sa(m) for _t, m in messages(FIX["sa_dump"])]
    assert any(sa.key == KEY for sa in sas)
    text = repr(SaParams(A4, B4, 1, REQID, KEY)) + repr(sas) + str(sas)
    assert FIX["key_hex"] not in text and not re.search(r"[0-9a-f]{72}", text)
    assert all(FIX["key_hex"] not in n for n in FIX["notifications"])
