"""Pure translation between the typed model (model.py) and the XFRM messages (messages.py).

Requests are built the way iproute2's `ip xfrm` builds them (same structure fields, same
attribute order, the replay state as a 24-byte XFRMA_REPLAY_ESN_VAL without bitmap), so the unit
tests can compare our bytes with bytes captured from `ip xfrm` itself. No I/O here.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any, TypeVar

from pyroute2.netlink import nlmsg

from gateway.dataplane.xfrm import consts as c
from gateway.dataplane.xfrm.messages import (
    xfrm_userpolicy_id,
    xfrm_userpolicy_info,
    xfrm_usersa_id,
    xfrm_usersa_info,
    xfrm_userspi_info,
)
from gateway.dataplane.xfrm.model import (
    Address,
    Lifetime,
    Mark,
    PolicyParams,
    PolicyState,
    SaAcquire,
    SaExpired,
    SaParams,
    SaState,
    Selector,
    Template,
    family_of,
)
from gateway.keymaterial import Secret

__all__ = [
    "allocspi_request",
    "parse_acquire",
    "parse_expire",
    "parse_policy",
    "parse_sa",
    "policy_id_request",
    "policy_request",
    "sa_id_request",
    "sa_request",
]

M = TypeVar("M", bound=nlmsg)


def blank(cls: type[M]) -> M:
    """A message with every structure field zeroed (pyroute2 cannot pack a missing address)."""
    msg: M = cls()
    for name, fmt in cls.fields:
        msg[name] = b"" if fmt.endswith("s") else 0
    return msg


def addr_bytes(addr: Address | None) -> bytes:
    """xfrm_address_t: 16 bytes, an IPv4 address in the first four."""
    return b"" if addr is None else addr.packed.ljust(16, b"\0")


def parse_addr(raw: bytes, family: int) -> Address:
    return IPv4Address(raw[:4]) if family == c.AF_INET else IPv6Address(raw[:16])


def _set_selector(msg: nlmsg, prefix: str, sel: Selector | None) -> None:
    if sel is None:
        return  # the zero selector: family AF_UNSPEC, matches everything
    msg[f"{prefix}daddr"] = addr_bytes(sel.dst.network_address)
    msg[f"{prefix}saddr"] = addr_bytes(sel.src.network_address)
    msg[f"{prefix}family"] = sel.family
    msg[f"{prefix}prefixlen_d"] = sel.dst.prefixlen
    msg[f"{prefix}prefixlen_s"] = sel.src.prefixlen
    msg[f"{prefix}proto"] = sel.proto


def _parse_selector(msg: nlmsg, prefix: str) -> Selector | None:
    family = msg[f"{prefix}family"]
    if family not in (c.AF_INET, c.AF_INET6):
        return None
    src = parse_addr(msg[f"{prefix}saddr"], family)
    dst = parse_addr(msg[f"{prefix}daddr"], family)
    return Selector(
        ip_network(f"{src}/{msg[f'{prefix}prefixlen_s']}", strict=False),
        ip_network(f"{dst}/{msg[f'{prefix}prefixlen_d']}", strict=False),
        msg[f"{prefix}proto"],
    )


def _set_lifetime(msg: nlmsg, prefix: str, lft: Lifetime) -> None:
    def limit(value: int | None) -> int:
        return c.XFRM_INF if value is None else value

    msg[f"{prefix}soft_byte_limit"] = limit(lft.soft_bytes)
    msg[f"{prefix}hard_byte_limit"] = limit(lft.hard_bytes)
    msg[f"{prefix}soft_packet_limit"] = limit(lft.soft_packets)
    msg[f"{prefix}hard_packet_limit"] = limit(lft.hard_packets)
    msg[f"{prefix}soft_add_expires_seconds"] = lft.soft_seconds or 0
    msg[f"{prefix}hard_add_expires_seconds"] = lft.hard_seconds or 0


def _parse_lifetime(msg: nlmsg, prefix: str) -> Lifetime:
    def limit(name: str) -> int | None:
        value = int(msg[f"{prefix}{name}"])
        return None if value == c.XFRM_INF else value

    def seconds(name: str) -> int | None:
        return int(msg[f"{prefix}{name}"]) or None

    return Lifetime(
        soft_seconds=seconds("soft_add_expires_seconds"),
        hard_seconds=seconds("hard_add_expires_seconds"),
        soft_bytes=limit("soft_byte_limit"), hard_bytes=limit("hard_byte_limit"),
        soft_packets=limit("soft_packet_limit"), hard_packets=limit("hard_packet_limit"),
    )


def _common_attrs(msg: nlmsg, mark: Mark | None, if_id: int | None) -> None:
    if mark is not None:
        msg["attrs"].append(["XFRMA_MARK", {"v": mark.value, "m": mark.mask}])
    if if_id:
        msg["attrs"].append(["XFRMA_IF_ID", if_id])


def sa_request(p: SaParams) -> xfrm_usersa_info:
    """NEWSA / UPDSA payload for a tunnel-mode ESP SA with an AEAD. Carries the key."""
    msg = blank(xfrm_usersa_info)
    _set_selector(msg, "sel_", p.selector)
    msg["id_daddr"] = addr_bytes(p.dst)
    msg["id_spi"] = p.spi
    msg["id_proto"] = c.IPPROTO_ESP
    msg["saddr"] = addr_bytes(p.src)
    _set_lifetime(msg, "lft_", p.lifetime)
    msg["reqid"] = p.reqid
    msg["family"] = family_of(p.dst)
    msg["mode"] = c.XFRM_MODE_TUNNEL
    msg["flags"] = (c.XFRM_STATE_ESN if p.esn else 0) | (
        c.XFRM_STATE_AF_UNSPEC if p.selector is None else 0)
    key = p.key.reveal()
    msg["attrs"].append(["XFRMA_ALG_AEAD", {
        "alg_name": p.algorithm.encode(), "alg_key_len": len(key) * 8,
        "alg_icv_len": p.icv_bits, "alg_key": key}])
    if p.replay_window or p.esn:
        # Always the ESN form, also without ESN: it allows windows beyond the legacy 32 packets.
        msg["attrs"].append(["XFRMA_REPLAY_ESN_VAL", {
            "bmp_len": (p.replay_window + 31) // 32, "oseq": 0, "seq": 0, "oseq_hi": 0,
            "seq_hi": 0, "replay_window": p.replay_window}])
    _common_attrs(msg, p.mark, p.if_id)
    return msg


def sa_id_request(dst: Address, spi: int, *, src: Address | None = None,
                  mark: Mark | None = None) -> xfrm_usersa_id:
    """GETSA / DELSA payload: the SA is found by (dst, spi, ESP[, mark])."""
    msg = blank(xfrm_usersa_id)
    msg["daddr"] = addr_bytes(dst)
    msg["spi"] = spi
    msg["family"] = family_of(dst)
    msg["proto"] = c.IPPROTO_ESP
    if src is not None:
        msg["attrs"].append(["XFRMA_SRCADDR", addr_bytes(src)])
    if mark is not None:
        msg["attrs"].append(["XFRMA_MARK", {"v": mark.value, "m": mark.mask}])
    return msg


def allocspi_request(src: Address, dst: Address, reqid: int, *, low: int = c.SPI_MIN,
                     high: int = c.SPI_MAX, mark: Mark | None = None,
                     if_id: int | None = None) -> xfrm_userspi_info:
    """ALLOCSPI payload: reserve an SPI for an inbound tunnel SA ``src`` -> ``dst`` (us)."""
    msg = blank(xfrm_userspi_info)
    msg["id_daddr"] = addr_bytes(dst)
    msg["id_proto"] = c.IPPROTO_ESP
    msg["saddr"] = addr_bytes(src)
    msg["reqid"] = reqid
    msg["family"] = family_of(dst)
    msg["mode"] = c.XFRM_MODE_TUNNEL
    msg["min"] = low
    msg["max"] = high
    _common_attrs(msg, mark, if_id)
    return msg


def _template_dict(t: Template, family: int) -> dict[str, Any]:
    return {
        "daddr": addr_bytes(t.dst), "spi": t.spi, "proto": t.proto, "family": family,
        "saddr": addr_bytes(t.src), "reqid": t.reqid, "mode": t.mode, "share": c.XFRM_SHARE_ANY,
        "optional": int(t.optional), "aalgos": c.XFRM_ALGO_ANY, "ealgos": c.XFRM_ALGO_ANY,
        "calgos": c.XFRM_ALGO_ANY,
    }


def policy_request(p: PolicyParams) -> xfrm_userpolicy_info:
    """NEWPOLICY / UPDPOLICY payload."""
    msg = blank(xfrm_userpolicy_info)
    _set_selector(msg, "sel_", p.selector)
    _set_lifetime(msg, "lft_", Lifetime())
    msg["priority"] = p.priority
    msg["dir"] = int(p.direction)
    msg["action"] = p.action
    if p.templates:
        templates = []
        for t in p.templates:
            outer = t.dst or t.src
            family = family_of(outer) if outer is not None else p.selector.family
            templates.append(_template_dict(t, family))
        msg["attrs"].append(["XFRMA_TMPL", {"templates": templates}])
    _common_attrs(msg, p.mark, p.if_id)
    return msg


def policy_id_request(selector: Selector, direction: c.Direction, *, mark: Mark | None = None,
                      if_id: int | None = None) -> xfrm_userpolicy_id:
    """GETPOLICY / DELPOLICY payload: a policy is found by its selector, direction, mark and
    if_id (the kernel's key for policies)."""
    msg = blank(xfrm_userpolicy_id)
    _set_selector(msg, "sel_", selector)
    msg["dir"] = int(direction)
    _common_attrs(msg, mark, if_id)
    return msg


def _mark(msg: nlmsg) -> Mark | None:
    raw = msg.get_attr("XFRMA_MARK")
    if raw is None or (raw["v"] == 0 and raw["m"] == 0):
        return None
    return Mark(raw["v"], raw["m"])


def parse_sa(msg: nlmsg) -> SaState:
    """An xfrm_usersa_info (GETSA answer, dump entry, EXPIRE state) as SaState."""
    family = msg["family"]
    aead = msg.get_attr("XFRMA_ALG_AEAD")
    esn = msg.get_attr("XFRMA_REPLAY_ESN_VAL")
    return SaState(
        src=parse_addr(msg["saddr"], family),
        dst=parse_addr(msg["id_daddr"], family),
        spi=msg["id_spi"],
        proto=msg["id_proto"],
        reqid=msg["reqid"],
        mode=msg["mode"],
        flags=msg["flags"],
        replay_window=esn["replay_window"] if esn is not None else msg["replay_window"],
        esn=bool(msg["flags"] & c.XFRM_STATE_ESN),
        algorithm=aead["alg_name"].rstrip(b"\0").decode() if aead is not None else None,
        key=Secret(aead["alg_key"][: aead["alg_key_len"] // 8]) if aead is not None else None,
        icv_bits=aead["alg_icv_len"] if aead is not None else None,
        lifetime=_parse_lifetime(msg, "lft_"),
        bytes=msg["curlft_bytes"],
        packets=msg["curlft_packets"],
        add_time=msg["curlft_add_time"],
        use_time=msg["curlft_use_time"],
        mark=_mark(msg),
        if_id=msg.get_attr("XFRMA_IF_ID") or None,
        selector=_parse_selector(msg, "sel_"),
        replay_errors=msg["stats_replay"],
        integrity_failures=msg["stats_integrity_failed"],
    )


def _templates(msg: nlmsg) -> tuple[Template, ...]:
    raw = msg.get_attr("XFRMA_TMPL")
    out = []
    for t in raw["templates"] if raw is not None else ():
        def addr(value: bytes, family: int = t["family"]) -> Address | None:
            return parse_addr(value, family) if any(value) else None

        out.append(Template(src=addr(t["saddr"]), dst=addr(t["daddr"]), reqid=t["reqid"],
                            proto=t["proto"], mode=t["mode"], spi=t["spi"],
                            optional=bool(t["optional"])))
    return tuple(out)


def parse_policy(msg: nlmsg, prefix: str = "") -> PolicyState:
    """An xfrm_userpolicy_info (GETPOLICY answer, dump entry) as PolicyState."""
    selector = _parse_selector(msg, f"{prefix}sel_")
    if selector is None:  # a family-less policy: shown as IPv4 any, it is not one of ours
        selector = Selector(ip_network("0.0.0.0/0"), ip_network("0.0.0.0/0"))
    return PolicyState(
        selector=selector,
        direction=c.Direction(msg[f"{prefix}dir"] & 3),
        templates=_templates(msg),
        priority=msg[f"{prefix}priority"],
        action=msg[f"{prefix}action"],
        mark=_mark(msg),
        if_id=msg.get_attr("XFRMA_IF_ID") or None,
        index=msg[f"{prefix}index"],
    )


def parse_expire(msg: nlmsg) -> SaExpired:
    """An xfrm_user_expire notification."""
    family = msg["family"]
    return SaExpired(
        src=parse_addr(msg["saddr"], family), dst=parse_addr(msg["id_daddr"], family),
        spi=msg["id_spi"], reqid=msg["reqid"], hard=bool(msg["hard"]),
        bytes=msg["curlft_bytes"], packets=msg["curlft_packets"],
    )


def parse_acquire(msg: nlmsg) -> SaAcquire:
    """An xfrm_user_acquire notification."""
    templates = _templates(msg)
    first = templates[0] if templates else None
    return SaAcquire(
        src=first.src if first else None, dst=first.dst if first else None,
        reqid=first.reqid if first else 0, selector=_parse_selector(msg, "sel_"),
        policy_index=msg["pol_index"],
    )

